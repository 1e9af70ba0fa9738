from __future__ import annotations

import argparse

from subtune.training.options import add_data_arguments, add_training_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="base file (subtune.base/1)")
    p.add_argument("-o", "--output", required=True,
                   help="task delta to write (--mode full writes a whole model in the base-file format)")
    p.add_argument("--blocks", help="blocks to tune: FIRST-LAST (13-14), a list (13,14), a stage name (layer3) "
                                    "or auto (greedy selection on the validation split); --mode lora: the blocks "
                                    "that get adapters (default all); --mode head2toe: the blocks whose outputs "
                                    "are tapped (default all)")
    p.add_argument("--mode", default="subtune", choices=["subtune", "linear", "full", "head2toe", "lora"],
                   help="subtune (default), linear (probe: new head only), full (finetune everything), "
                        "head2toe (a head on features pooled from many blocks, chosen by group lasso) or "
                        "lora (low-rank adapters, merged into the blocks for deployment)")
    g = p.add_argument_group("--mode lora")
    g.add_argument("--lora-rank", type=int, default=8, help="adapter rank r (default 8)")
    g.add_argument("--lora-alpha", type=float, help="scaling numerator: updates are alpha/r * B A (default alpha = r)")
    g = p.add_argument_group("--mode head2toe")
    g.add_argument("--feature-budget", help="features to keep: a number, or a list (256,1024,4096, the default) "
                                            "from which validation accuracy chooses")
    g.add_argument("--tap-grid", type=int, default=2, help="pool each tapped feature map to GRID x GRID (default 2)")
    g.add_argument("--group-lasso", type=float, default=0.05,
                   help="group-lasso strength of the feature-importance fit, as a fraction of the strength that "
                        "zeroes every feature (default 0.05)")
    p.add_argument("--siamese", action="store_true", help="the head sees [base features, tuned features] (§5.1)")
    p.add_argument("--epsilon", type=float, default=0.005,
                   help="--blocks auto: stop when a block adds less validation accuracy than this (default 0.005)")
    p.add_argument("--max-blocks", type=int, default=3, help="--blocks auto: at most this many blocks (default 3)")
    p.add_argument("--name", help="task name, also the ONNX output name (default: from the output file name)")
    p.add_argument("--report", help="JSON report (default: beside the output, .train.json)")
    add_data_arguments(p)
    add_training_arguments(p)
    from subtune.commands.profile import add_ray_arguments

    add_ray_arguments(p)  # --blocks auto: each step's candidate windows as parallel Ray tasks


def run(args: argparse.Namespace) -> int:
    from subtune.api import train

    result = train(args.base, args.data, args.output, blocks=args.blocks, mode=args.mode, name=args.name,
                   report=args.report or True, siamese=args.siamese, epsilon=args.epsilon, max_blocks=args.max_blocks,
                   lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, feature_budget=args.feature_budget,
                   tap_grid=args.tap_grid, group_lasso=args.group_lasso, image_size=args.image_size,
                   limit=args.limit, val_split=args.val_split, data_seed=args.data_seed, label_map=args.label_map,
                   test=args.test, test_limit=args.test_limit, epochs=args.epochs, lr=args.lr,
                   weight_decay=args.weight_decay, batch_size=args.batch_size, seed=args.seed, augment=args.augment,
                   freeze_bn=args.freeze_bn, cache=not args.no_cache, cache_dir=args.cache_dir,
                   cache_memory=args.cache_memory, threads=args.threads, ray=args.ray,
                   ray_cpus_per_run=args.ray_cpus_per_run, ray_gpus_per_run=args.ray_gpus_per_run,
                   on_progress=lambda line: print(line, flush=True))
    run_ = result.run
    how = "cached activations" if run_.cached else "full forward pass"
    test_txt = f", test accuracy {run_.test_accuracy:.4f}" if run_.test_accuracy is not None else ""
    print(f"trained {result.written}: validation accuracy {run_.val_accuracy:.4f}{test_txt}; "
          f"{result.report['training']['epochs']} epochs, {run_.params:,} trainable parameters, "
          f"{run_.seconds:.1f} s training ({how}), {result.cache_seconds:.1f} s caching frozen activations")
    print(f"wrote {result.output}; report {result.report_path}")
    return 0
