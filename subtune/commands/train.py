from __future__ import annotations

import argparse

from subtune.commands.training_flags import (FLAGS, add_data_arguments, add_ray_arguments,  # noqa: F401 - FLAGS: cli
                                             add_training_arguments)

# The flags of each --mode (what its option object takes); any other mode's flag is refused.
MODE_FLAGS = {"subtune": ("blocks", "siamese", "epsilon", "max_blocks"),
              "head2toe": ("blocks", "feature_budget", "tap_grid", "group_lasso"),
              "lora": ("blocks", "lora_rank", "lora_alpha"),
              "linear": (), "full": ()}
OPTION = {"lora_rank": "rank", "lora_alpha": "alpha"}  # flag destination -> the option object's field


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="base file (subtune.base/1)")
    p.add_argument("-o", "--output", required=True,
                   help="task delta to write (--mode full writes a whole model in the base-file format)")
    p.add_argument("--blocks", help="blocks to tune: FIRST-LAST (13-14), a list (13,14), a stage name (layer3) "
                                    "or auto (greedy selection on the validation split); --mode lora: the blocks "
                                    "that get adapters (default all); --mode head2toe: the blocks whose outputs "
                                    "are tapped (default all)")
    p.add_argument("--mode", default="subtune", choices=list(MODE_FLAGS),
                   help="subtune (default), linear (probe: new head only), full (finetune everything), "
                        "head2toe (a head on features pooled from many blocks, chosen by group lasso) or "
                        "lora (low-rank adapters, merged into the blocks for deployment)")
    g = p.add_argument_group("--mode lora")
    g.add_argument("--lora-rank", type=int, help="adapter rank r (default 8)")
    g.add_argument("--lora-alpha", type=float, help="scaling numerator: updates are alpha/r * B A (default alpha = r)")
    g = p.add_argument_group("--mode head2toe")
    g.add_argument("--feature-budget", help="features to keep: a number, or a list (256,1024,4096, the default) "
                                            "from which validation accuracy chooses")
    g.add_argument("--tap-grid", type=int, help="pool each tapped feature map to GRID x GRID (default 2)")
    g.add_argument("--group-lasso", type=float,
                   help="group-lasso strength of the feature-importance fit, as a fraction of the strength that "
                        "zeroes every feature (default 0.05)")
    g = p.add_argument_group("--mode subtune")
    g.add_argument("--siamese", action="store_true", help="the head sees [base features, tuned features] (§5.1)")
    g.add_argument("--epsilon", type=float,
                   help="--blocks auto: stop when a block adds less validation accuracy than this (default 0.005)")
    g.add_argument("--max-blocks", type=int, help="--blocks auto: at most this many blocks (default 3)")
    p.add_argument("--name", help="task name, also the ONNX output name (default: from the output file name)")
    p.add_argument("--report", help="JSON report (default: beside the output, .train.json)")
    add_data_arguments(p)
    add_training_arguments(p)
    add_ray_arguments(p)  # --blocks auto: each step's candidate windows as parallel Ray tasks


def method_from_flags(args: argparse.Namespace):
    """The option object of --mode, from its own flags; another mode's flag is refused."""
    from subtune.commands.flag_values import given, refuse_unless
    from subtune.training.options import METHODS

    mine = MODE_FLAGS[args.mode]
    for dest in sorted({d for flags in MODE_FLAGS.values() for d in flags} - set(mine)):
        modes = ", ".join(m for m, flags in MODE_FLAGS.items() if dest in flags)
        refuse_unless(args, False, [dest], f"with --mode {args.mode}: only with --mode {modes}")
    options = {OPTION.get(d, d): getattr(args, d) for d in given(args, *mine)}
    if args.mode == "subtune":
        options["blocks"] = args.blocks  # required: SubTuning says so when it is missing
    return METHODS[args.mode](**options)


def run(args: argparse.Namespace) -> int:
    from subtune.commands.training_flags import data_options, passive_openmp, ray_options, training_options

    passive_openmp()
    from subtune.api import train

    result = train(args.base, args.data, args.output, method=method_from_flags(args), name=args.name,
                   report=args.report or True, data_options=data_options(args), training=training_options(args),
                   ray=ray_options(args), threads=args.torch_threads, on_progress=lambda line: print(line, flush=True))
    run_ = result.run
    how = "cached activations" if run_.cached else "full forward pass"
    test_txt = f", test accuracy {run_.test_accuracy:.4f}" if run_.test_accuracy is not None else ""
    print(f"trained {result.written}: validation accuracy {run_.val_accuracy:.4f}{test_txt}; "
          f"{result.report['training']['epochs']} epochs, {run_.params:,} trainable parameters, "
          f"{run_.seconds:.1f} s training ({how}), {result.cache_seconds:.1f} s caching frozen activations")
    print(f"wrote {result.output}; report {result.report_path}")
    return 0
