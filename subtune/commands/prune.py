from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_base_and_task(p)
    p.add_argument("--ratio", type=float, required=True,
                   help="fraction of the channels inside the tuned blocks to remove, in (0, 1)")
    add_pruning_arguments(p)
    p.add_argument("--data", help="recover accuracy by training the pruned blocks and head on this data "
                                  "(fashion-mnist, imagefolder:DIR, ...), and report accuracy before and after")
    add_data_arguments(p)
    p.add_argument("-o", "--output", required=True, help="the pruned task file")
    p.add_argument("--report", help="JSON report path (default: beside the output, .report.json)")


def add_base_and_task(p: argparse.ArgumentParser) -> None:
    """BASE TASK, base first as in every command; the old `TASK --base BASE` still works, with a warning."""
    p.add_argument("base", metavar="BASE", help="the base file the task was trained from (subtune.base/1)")
    p.add_argument("task", metavar="TASK", nargs="?", help="task delta file (subtune.task/1), not yet pruned")
    p.add_argument("--base", dest="old_base", help=argparse.SUPPRESS)  # the old form: TASK --base BASE


def base_and_task(args: argparse.Namespace) -> tuple[str, str]:
    import sys

    from subtune.errors import SubtuneError

    if args.old_base is None:
        if args.task is None:
            raise SubtuneError(f"expected BASE TASK: the base file, then the task file (subtune {args.command} "
                               "base.pt task.pt ...)")
        return args.base, args.task
    if args.task is not None:
        raise SubtuneError(f"two bases: give BASE TASK without --base (subtune {args.command} base.pt task.pt ...)")
    print(f"subtune {args.command}: warning: `subtune {args.command} TASK --base BASE` is deprecated: the base comes "
          f"first, as in every command: `subtune {args.command} {args.old_base} {args.base} ...`", file=sys.stderr)
    return args.old_base, args.base


def add_pruning_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--norm", choices=["l1", "l2"], default="l2",
                   help="channel importance: L1 or L2 norm of the weights")
    p.add_argument("--scope", choices=["local", "global"], default="local",
                   help="local: the same fraction in every layer; global: rank channels across all tuned blocks")
    p.add_argument("--round-to", type=int, help="keep channel counts multiples of this (e.g. 8)")
    p.add_argument("--no-heads", action="store_true", help="ViT: keep every attention head, prune the MLP width only")


RECOVERY_FLAGS = ("label_map", "limit", "test_limit", "epochs", "lr", "batch_size", "seed")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-map", help="the coarser classes the task was trained with, as for `subtune train`")
    p.add_argument("--limit", type=int, help="class-balanced training images for recovery (default: all)")
    p.add_argument("--test-limit", type=int, default=2000, help="test images for accuracy (default 2000)")
    p.add_argument("--epochs", type=int,
                   help="recovery epochs (default: the trainer's, 10, or 50 for <= 1000 images; 0: none)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from subtune.commands.flag_values import refuse_unless

    base, task = base_and_task(args)
    refuse_unless(args, args.data is not None, RECOVERY_FLAGS,
                  "without --data: the accuracy check and the recovery training run on DATA")
    from subtune.api import prune

    result = prune(base, task, args.output, ratio=args.ratio, norm=args.norm, scope=args.scope,
                   round_to=args.round_to, heads=not args.no_heads, data=args.data, label_map=args.label_map,
                   limit=args.limit, test_limit=args.test_limit, epochs=args.epochs, lr=args.lr,
                   batch_size=args.batch_size, seed=args.seed, report=args.report or True)
    print(summary(result.report))
    print(f"wrote {result.output}; report: {result.report_path}")
    return 0


def frozen_backbone(base):
    """The base's backbone, frozen (kept here for scripts that import it from the command)."""
    from subtune.api._prune import frozen_backbone as frozen

    return frozen(base)


def summary(report: dict) -> str:
    o = report["options"]
    lines = [f"pruned {o['ratio']:.0%} ({o['scope']}, {o['norm'].upper()}"
             + (f", round_to {o['round_to']}" if o["round_to"] else "") + ") of the channels inside the tuned blocks",
             f"  {'block':>5} {'params':>21} {'FLOPs':>25}  kept per layer"]
    for b, v in report["blocks"].items():
        kept = ", ".join(f"{name} {n}/{total}" for name, (total, n) in v["kept"].items()) or "nothing prunable inside"
        (p0, p1), (f0, f1) = v["params"], v["flops"]
        lines.append(f"  {b:>5} {p0:>10,} -> {p1:<9,} {f0:>12,} -> {f1:<11,} {kept}")
    lines.append(f"  total: {report['params_kept']:.1%} of the parameters, "
                 f"{report['flops_kept']:.1%} of the FLOPs kept")
    acc = report.get("accuracy")
    if acc:
        lines.append("  accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items())
                     + f" ({report['data']['test_images']} test images)")
    return "\n".join(lines)
