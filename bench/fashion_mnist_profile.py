"""Issue 3's acceptance run: EfficientNet-Lite0 (ImageNet) -> Fashion-MNIST with 1,000 training images.

    python bench/fashion_mnist_profile.py [--image-size 64] [--seeds 0,1,2] [--epochs 50] [-o out/fmnist_profile]
    python bench/fashion_mnist_profile.py --estimate    # two short epochs of every run, extrapolated

Protocol. 1,250 labelled images drawn class-balanced from Fashion-MNIST's training file (data
seed 0), split 1,000 train / 250 validation; accuracy on 2,000 class-balanced images of the
separate test file. Every run uses the paper's Appendix A settings (AdamW, lr 1e-3, weight decay
0.01, batch 256, cosine schedule) with 50 epochs (the low-data regime) and no augmentation, so
SubTuning trains on cached activations. For each training seed: the linear probe, SubTuning of
each single block 1..16 (the finetuning profile), and full finetuning. Greedy selection (the
slides' algorithm) scores a block set by its mean validation accuracy over the seeds; its first
step is the profile itself (the same runs). Test accuracy is reported and never used to choose.
Then the cached-activation speed-up on the greedy blocks (same seed, both paths).

Writes OUT/results.json, OUT/table.md and OUT/profile.png.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads crawl on shared cores

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_cache_speedup import format_speedup, labelled_splits, measure, pretrained_base  # noqa: E402

from subtune.atomic import write_text  # noqa: E402
from subtune.models.blocks import block_span

ARCH = "timm:efficientnet_lite0"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=64, help="default 64 (224 is ~12x slower on a CPU)")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--val", type=int, default=250)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--window", type=int, default=1)
    p.add_argument("--epsilon", type=float, default=0.005)
    p.add_argument("--max-blocks", type=int, default=3)
    p.add_argument("--no-full", action="store_true", help="skip full finetuning (the slowest baseline)")
    p.add_argument("--no-speedup", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--estimate", action="store_true", help="time two epochs on --estimate-train images, extrapolate")
    p.add_argument("--estimate-train", type=int, default=256)
    p.add_argument("--render", metavar="RESULTS_JSON", help="only redraw table.md and profile.png from a results.json")
    p.add_argument("-o", "--out", default="out/fmnist_profile")
    args = p.parse_args(argv)
    if args.render:
        from subtune.benchmarking.report import read_results

        results = read_results(args.render, "--render")
        table = format_table(results)
        _write(args.out, results, table)
        print(table)
        return 0

    import torch

    from subtune.training.data import load_dataset
    from subtune.training.trainer import TrainConfig, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    began, cpu_began = time.perf_counter(), time.process_time()
    seeds = [int(s) for s in args.seeds.split(",")]
    base = pretrained_base(ARCH)
    train, val = labelled_splits(base, "fashion-mnist", args.train, args.val, args.image_size)
    test = load_dataset("fashion-mnist", "test", image_size=args.image_size, mean=train.mean, std=train.std,
                        limit=args.test)
    config = TrainConfig(epochs=args.epochs)
    if args.estimate:
        est_train = train.subset(range(0, len(train), max(1, len(train) // args.estimate_train)))
        trainer = Trainer(base, est_train, val, test, config=replace(config, epochs=2))
        text = estimate(trainer, args, seeds, len(train))
        print(text)
        return 0

    trainer = Trainer(base, train, val, test, config=config)
    results = run_all(trainer, args, seeds)
    if not args.no_speedup:
        results["speedup"] = _speedup_json(measure(base, train, val, results["greedy"]["selected_blocks"],
                                                   replace(config, seed=seeds[0])))
    results.update(wall_seconds=round(time.perf_counter() - began, 1), cpu_seconds=round(time.process_time() - cpu_began, 1),
                   machine={"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                            "processor": platform.processor() or platform.machine()},
                   protocol={"arch": ARCH, "image_size": args.image_size, "train": len(train), "val": len(val),
                             "test": len(test), "seeds": seeds, "training": config.to_meta(),
                             "command": "python " + " ".join(sys.argv)})
    table = format_table(results)
    print(table)
    _write(args.out, results, table)
    return 0


# ---------------------------------------------------------------------- the experiment


def run_all(trainer, args, seeds: list[int]) -> dict:
    from subtune.training.greedy import greedy_select
    from subtune.training.profile import aggregate, windows

    runs: dict[tuple, object] = {}

    def get(kind, blocks=(), seed=0):
        key = (kind, tuple(blocks), seed)
        if key not in runs:
            r = {"linear": lambda: trainer.linear(seed=seed), "full": lambda: trainer.full(seed=seed),
                 "subtune": lambda: trainer.subtune(list(blocks), seed=seed)}[kind]()
            r.net = None  # keep the numbers, not the weights
            runs[key] = r
            print(f"  {kind:8} {block_span(blocks) if kind == 'subtune' else '':>6} seed {seed}: "
                  f"val {r.val_accuracy:.4f} test {r.test_accuracy:.4f} ({r.seconds:.0f} s)", flush=True)
        return runs[key]

    linear = aggregate([get("linear", seed=s) for s in seeds])
    profile = [aggregate([get("subtune", b, s) for s in seeds])
               for b in windows(trainer.backbone.num_blocks, args.window)]

    def score(blocks: list[int]) -> float:
        return statistics.fmean(get("subtune", blocks, s).val_accuracy for s in seeds)

    path = greedy_select(score, trainer.backbone.num_blocks, epsilon=args.epsilon, max_blocks=args.max_blocks,
                         start_score=linear["accuracy"])
    for line in path.describe():
        print(line)
    greedy = aggregate([get("subtune", path.selected, s) for s in seeds])
    full = None if args.no_full else aggregate([get("full", seed=s) for s in seeds])
    best_single = max(profile, key=lambda e: (e["accuracy"], e["blocks"][0]))
    return {"linear": linear, "profile": profile, "best_single_by_val": best_single,
            "greedy": {**greedy, "path": path.to_json(), "selected_blocks": path.selected}, "full": full,
            "cache_seconds": round(trainer.cache_seconds, 1), "stages": trainer.backbone.stages}


def estimate(trainer, args, seeds: list[int], n_train: int) -> str:
    """Time one epoch of every run on a subset, scale to n_train images, epochs and seeds."""
    from subtune.training.profile import windows

    scale = n_train / len(trainer.data["train"]) * args.epochs

    def cost(result) -> float:  # the last epoch: the first pays one-off set-up costs
        return result.history[-1]["seconds"] * scale + result.eval_seconds

    began = time.perf_counter()
    lin = cost(trainer.linear())
    per_window = {block_span(b): cost(trainer.subtune(b)) for b in windows(trainer.backbone.num_blocks, args.window)}
    full = 0.0 if args.no_full else cost(trainer.full())
    greedy_extra = 2 * (args.max_blocks - 1) * 1.5 * statistics.median(per_window.values())
    speed = 0.0
    if not args.no_speedup:
        s = measure(trainer.base, trainer.data["train"], trainer.data["val"], [13, 14], trainer.config)
        speed = (s.full_train_seconds + s.cached_train_seconds) / trainer.config.epochs * scale
    cache = trainer.cache_seconds * n_train / len(trainer.data["train"])
    total = (lin + sum(per_window.values()) + full + greedy_extra) * len(seeds) + speed + cache
    lines = [f"estimate from the second of two epochs on {len(trainer.data['train'])} images ({time.perf_counter() - began:.0f} s "
             f"measured, {trainer.config.eval_batch_size} eval batch), scaled to {n_train} images x {args.epochs} "
             f"epochs x {len(seeds)} seeds at {args.image_size}px:",
             f"  linear probe   {lin:8.0f} s/seed", f"  full finetune  {full:8.0f} s/seed",
             *[f"  block {k:>5}    {v:8.0f} s/seed" for k, v in per_window.items()],
             f"  greedy extras  {greedy_extra:8.0f} s/seed (rough: {2 * (args.max_blocks - 1)} runs at 1.5x the median window)",
             f"  speed-up check {speed:8.0f} s", f"  caching        {cache:8.0f} s",
             f"  total          {total:8.0f} s = {total / 3600:.1f} h"]
    return "\n".join(lines)


# ---------------------------------------------------------------------- formatting


def _pm(entry: dict, key: str) -> str:
    """mean ± std over seeds; a single seed has no spread to show, so it shows none."""
    if len(entry.get("runs", [])) < 2:
        return f"{entry[key]:.4f}"
    return f"{entry[key]:.4f} ± {entry.get(key + '_std', 0):.4f}"


def format_table(r: dict) -> str:
    p = r["protocol"]
    rows = [("linear probe", "–", r["linear"]),
            ("SubTuning, best single block by validation", _span_list(r["best_single_by_val"]["blocks"]),
             r["best_single_by_val"]),
            (f"SubTuning, greedy (ε={r['greedy']['path']['epsilon']}, ≤{r['greedy']['path']['max_blocks']} blocks)",
             _span_list(r["greedy"]["blocks"]), r["greedy"])]
    if r["full"]:
        rows.append(("full finetuning", "all", r["full"]))
    out = [f"EfficientNet-Lite0 (ImageNet) -> Fashion-MNIST: {p['train']} train / {p['val']} val / {p['test']} test "
           f"images at {p['image_size']}px, {p['training']['epochs']} epochs, seeds {p['seeds']}"
           + (" (mean ± std)" if len(p["seeds"]) > 1 else " (one seed: no spread)"), "",
           "| method | blocks | trainable params | val accuracy | test accuracy | s per run |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    out += [f"| {name} | {blocks} | {e['params']:,} | {_pm(e, 'accuracy')} | {_pm(e, 'test_accuracy')} | "
            f"{e['seconds']:.0f} |" for name, blocks, e in rows]
    out += ["", "Finetuning profile (one block at a time):", "",
            "| block | params | val accuracy | test accuracy | s per run |", "| ---: | ---: | ---: | ---: | ---: |"]
    out += [f"| {_span_list(e['blocks'])} | {e['params']:,} | {_pm(e, 'accuracy')} | {_pm(e, 'test_accuracy')} | "
            f"{e['seconds']:.0f} |" for e in r["profile"]]
    if "speedup" in r:
        out += ["", "Cached activations vs full forward path (greedy blocks, one seed):", "", r["speedup"]["text"]]
    out += ["", f"wall time {r['wall_seconds'] / 60:.1f} min ({r['cpu_seconds'] / 60:.1f} CPU-min) on "
            f"{r['machine']['cpus']} CPUs, {r['machine']['threads']} torch threads; command: {p['command']}"]
    return "\n".join(out)


def _write(out_dir: str, results: dict, table: str) -> None:
    from subtune.training.plot import plot_profile

    os.makedirs(out_dir, exist_ok=True)
    write_text(os.path.join(out_dir, "results.json"), json.dumps(results, indent=2))
    write_text(os.path.join(out_dir, "table.md"), table + "\n")
    baselines = {"linear": results["linear"], **({"full": results["full"]} if results["full"] else {})}
    plot_profile({"entries": results["profile"], "baselines": baselines, "arch": ARCH, "data": "Fashion-MNIST (1k)",
                  "window": 1}, os.path.join(out_dir, "profile.png"), stages=results["stages"])
    print(f"wrote {out_dir}/results.json, table.md, profile.png", file=sys.stderr)


def _speedup_json(s) -> dict:
    return {**asdict(s), "speedup_loop": s.speedup_loop, "speedup_total": s.speedup_total, "text": format_speedup(s)}


def _span_list(pair: list[int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}-{pair[1]}"


if __name__ == "__main__":
    sys.exit(main())
