from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", help="task delta file (subtune.task/1), not yet pruned")
    p.add_argument("--base", required=True, help="the base file the task was trained from")
    p.add_argument("--ratio", type=float, required=True,
                   help="fraction of the channels inside the tuned blocks to remove, in (0, 1)")
    add_pruning_arguments(p)
    p.add_argument("--data", help="recover accuracy by training the pruned blocks and head on this data "
                                  "(fashion-mnist, imagefolder:DIR, ...), and report accuracy before and after")
    add_data_arguments(p)
    p.add_argument("-o", "--output", required=True, help="the pruned task file")
    p.add_argument("--report", help="JSON report path (default: beside the output, .report.json)")


def add_pruning_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--norm", choices=["l1", "l2"], default="l2",
                   help="channel importance: L1 or L2 norm of the weights")
    p.add_argument("--scope", choices=["local", "global"], default="local",
                   help="local: the same fraction in every layer; global: rank channels across all tuned blocks")
    p.add_argument("--round-to", type=int, help="keep channel counts multiples of this (e.g. 8)")
    p.add_argument("--no-heads", action="store_true", help="ViT: keep every attention head, prune the MLP width only")


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
    from subtune.atomic import check_writable, write_text
    from subtune.errors import SubtuneError
    from subtune.formats import load_base, load_task, save_task, validate_task
    from subtune.pruning.prune import prune_task

    options = pruning_options(args)
    out = check_writable(args.output)
    report_path = check_writable(Path(args.report) if args.report else out.with_suffix(".report.json"))
    if report_path.resolve() == out.resolve():
        raise SubtuneError(f"--report {report_path} is the same file as -o {out}: choose another report path")
    base, task = load_base(args.base), load_task(args.task)
    if task.taps is not None:
        raise SubtuneError(f"{args.task} is a tap task (Head2Toe or linear probe): it tunes no blocks, so there are "
                           "no channels to prune; prune a SubTuning or LoRA task")
    backbone = frozen_backbone(base)
    validate_task(task, base, backbone)
    data = TaskData(args, task, base, backbone) if args.data else None
    result = prune_task(task, base, options, backbone=backbone)
    pruned, report = result.task, dict(result.report)
    if data:
        report["accuracy"] = {"unpruned": data.accuracy(task), "pruned": data.accuracy(pruned)}
        if data.config:
            pruned = data.recover(pruned)
            report["accuracy"]["recovered"] = data.accuracy(pruned)
            report["recovery"] = data.config.to_meta()
        report["data"] = data.describe()
    save_task(out, pruned)
    report = {"task": args.task, "output": str(out), **report}
    write_text(report_path, json.dumps(report, indent=2))
    print(summary(report))
    print(f"wrote {out}; report: {report_path}")
    return 0


def pruning_options(args: argparse.Namespace):
    from subtune.pruning.plan import PruneOptions

    return PruneOptions(args.ratio, args.norm, args.scope, args.round_to, heads=not args.no_heads).check()


def frozen_backbone(base):
    from subtune.training.network import freeze

    _, backbone = base.build()
    return freeze(backbone)


class TaskData:
    """Train and test data for one task, cached before its first tuned block (loaded once)."""

    def __init__(self, args: argparse.Namespace, task, base, backbone):
        from subtune.training.trainer import TrainConfig, default_epochs

        self.backbone, self.base, self.spec = backbone, base, args.data
        self.test = self._cached(args, task, "test", args.test_limit)
        self.config, self.train = None, None
        if args.epochs != 0:
            self.train = self._cached(args, task, "train", args.limit)
            epochs = args.epochs if args.epochs is not None else default_epochs(len(self.train))
            self.config = TrainConfig(epochs=epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)

    def _cached(self, args: argparse.Namespace, task, split: str, limit: int | None):
        from subtune.pruning.recover import CachedData, load_task_data

        images, labels = load_task_data(task, self.base, args.data, split, limit=limit, seed=args.seed,
                                        label_map=args.label_map)
        return CachedData(self.backbone, task.first, images, labels, siamese=task.siamese)

    def accuracy(self, task) -> float:
        from subtune.pruning.recover import accuracy

        return accuracy(task, self.backbone, self.test)

    def recover(self, task):
        from subtune.pruning.recover import recover

        return recover(task, self.base, self.backbone, self.train, self.config)

    def describe(self) -> dict:
        return {"spec": self.spec, "train_images": len(self.train) if self.train else 0, "test_images": len(self.test)}


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
