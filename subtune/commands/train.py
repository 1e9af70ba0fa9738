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
    from subtune.training.options import prepare_runtime

    prepare_runtime(args)

    import json
    import time
    from pathlib import Path

    from subtune.atomic import check_writable, write_text
    from subtune.errors import SubtuneError
    from subtune.formats import TASK_NAME, load_base
    from subtune.models.blocks import parse_blocks
    from subtune.training.greedy import greedy_select
    from subtune.training.options import cache_options, data_summary, load_splits, train_config
    from subtune.training.outputs import task_name_from, write_result
    from subtune.training.trainer import Trainer

    began = time.perf_counter()
    out = check_writable(args.output)
    report_path = check_writable(Path(args.report) if args.report else out.with_suffix(".train.json"))
    if Path(report_path).resolve() == Path(out).resolve():
        raise SubtuneError(f"--report {report_path} is the same file as -o {out}: choose another report path")
    name = args.name or task_name_from(args.output)
    if args.mode != "full" and not TASK_NAME.match(name):
        raise SubtuneError(f"--name {name!r}: expected letters, digits, '_' or '-', starting with a letter or '_'")
    if args.mode == "subtune" and not args.blocks:
        raise SubtuneError("--blocks is required with --mode subtune: e.g. --blocks 13-14, a stage name, or auto")
    if args.mode in ("linear", "full") and (args.blocks or args.siamese):
        raise SubtuneError(f"--mode {args.mode} trains no chosen blocks: drop --blocks/--siamese")
    if args.mode in ("lora", "head2toe") and args.siamese:
        raise SubtuneError(f"--siamese is for --mode subtune; --mode {args.mode} has a plain head")
    if args.mode in ("lora", "head2toe") and args.blocks and args.blocks.strip() == "auto":
        raise SubtuneError(f"--blocks auto is for --mode subtune; with --mode {args.mode} give blocks "
                           "(e.g. the ones `--blocks auto` chose for SubTuning) or leave --blocks out for all")
    if args.mode == "lora" and (args.lora_rank < 1 or (args.lora_alpha is not None and args.lora_alpha <= 0)):
        raise SubtuneError("--lora-rank must be at least 1 and --lora-alpha positive")
    if args.mode == "head2toe" and args.tap_grid < 1:
        raise SubtuneError(f"--tap-grid must be at least 1, found {args.tap_grid}")
    if args.max_blocks < 1:
        raise SubtuneError("--max-blocks must be at least 1")

    base = load_base(args.base)
    _, backbone = base.build()
    auto = args.mode == "subtune" and args.blocks.strip() == "auto"
    blocks = parse_blocks(args.blocks, backbone) if args.blocks and not auto else None
    budgets = None
    if args.mode == "head2toe":
        from subtune.training.head2toe import parse_budgets

        budgets = parse_budgets(args.feature_budget)

    train, val, test = load_splits(args, base)
    config = train_config(args, len(train))
    print(f"data {data_summary(train, val, test)}")
    trainer = Trainer(base, train, val, test, config=config, **cache_options(args))
    path = None
    if args.mode == "linear":
        result = trainer.linear()
    elif args.mode == "full":
        result = trainer.full()
    elif args.mode == "lora":
        result = trainer.lora(blocks, rank=args.lora_rank, alpha=args.lora_alpha)
    elif args.mode == "head2toe":
        from subtune.training.head2toe import default_points

        result = trainer.head2toe(points=default_points(trainer.backbone, blocks), grid=args.tap_grid,
                                  budgets=budgets, group_lasso=args.group_lasso)
    elif auto:
        result, path = _greedy(trainer, args, greedy_select)
    else:
        result = trainer.subtune(blocks, siamese=args.siamese)

    meta = {"val_accuracy": result.val_accuracy, "training": {**config.to_meta(), "seed": result.seed},
            "data": {split: ds.info for split, ds in (("train", train), ("val", val), ("test", test)) if ds is not None},
            "preprocess": train.preprocess(), "params": result.params, "seconds": round(result.seconds, 2),
            "history": result.history}
    if result.test_accuracy is not None:
        meta["test_accuracy"] = result.test_accuracy
    if path is not None:
        meta["selection"] = path.to_json()
    what = write_result(args.output, base, result, name=name, classes=train.classes, meta=meta)
    report = {"output": str(out), "wrote": what, "base": args.base, "name": name, **result.summary(),
              "classes": train.classes, "preprocess": train.preprocess(), "training": meta["training"],
              "data": meta["data"], "history": result.history, "selection": meta.get("selection"),
              "cache_seconds": round(trainer.cache_seconds, 2), "total_seconds": round(time.perf_counter() - began, 2)}
    write_text(report_path, json.dumps(report, indent=2))
    how = "cached activations" if result.cached else "full forward pass"
    test_txt = f", test accuracy {result.test_accuracy:.4f}" if result.test_accuracy is not None else ""
    print(f"trained {what}: validation accuracy {result.val_accuracy:.4f}{test_txt}; {config.epochs} epochs, "
          f"{result.params:,} trainable parameters, {result.seconds:.1f} s training ({how}), "
          f"{trainer.cache_seconds:.1f} s caching frozen activations")
    print(f"wrote {out}; report {report_path}")
    return 0


def _greedy(trainer, args, greedy_select):
    if args.ray:
        return _greedy_on_ray(trainer, args, greedy_select)
    results = {}

    def score(blocks: list[int]) -> float:
        key = tuple(blocks)
        if key not in results:
            results[key] = trainer.subtune(blocks, siamese=args.siamese, test=False)
            print(f"  blocks {blocks[0]}-{blocks[-1]}: validation accuracy {results[key].val_accuracy:.4f}", flush=True)
        return results[key].val_accuracy

    linear = trainer.linear()
    print(f"greedy selection (epsilon {args.epsilon}, at most {args.max_blocks} blocks); "
          f"linear probe validation accuracy {linear.val_accuracy:.4f}")
    path = greedy_select(score, trainer.backbone.num_blocks, epsilon=args.epsilon, max_blocks=args.max_blocks,
                         start_score=linear.val_accuracy)
    for line in path.describe():
        print(line)
    return trainer.evaluate_test(results[tuple(path.selected)]), path


def _greedy_on_ray(trainer, args, greedy_select):
    """Each step's candidate windows as parallel Ray tasks, which return numbers, not weights; the
    chosen window is then trained once more here with the workers' thread count (the same seed
    and threads give the same weights)."""
    import torch

    from subtune.cluster import RayExecutor
    from subtune.training.profile import window_scorer

    linear = trainer.linear()
    print(f"greedy selection on Ray (epsilon {args.epsilon}, at most {args.max_blocks} blocks); "
          f"linear probe validation accuracy {linear.val_accuracy:.4f}")

    def show(spec, result):
        print(f"  blocks {spec.group}: validation accuracy {result['val_accuracy']:.4f}", flush=True)

    with RayExecutor(trainer, address=None if args.ray == "local" else args.ray, cpus_per_run=args.ray_cpus_per_run,
                     gpus_per_run=args.ray_gpus_per_run) as ex:
        print(f"running on {ex.describe()}", flush=True)
        scorer = window_scorer(ex, seeds=[trainer.config.seed], siamese=args.siamese, on_run=show)
        path = greedy_select(None, trainer.backbone.num_blocks, epsilon=args.epsilon, max_blocks=args.max_blocks,
                             start_score=linear.val_accuracy, score_many=scorer)
    for line in path.describe():
        print(line)
    torch.set_num_threads(ex.threads)
    result = trainer.subtune(path.selected, siamese=args.siamese, test=False)
    return trainer.evaluate_test(result), path
