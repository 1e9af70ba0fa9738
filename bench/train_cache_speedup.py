"""Cached activations (paper §3.2) against the full forward path: the same SubTuning run, same
seed, timed both ways, and checked to give the same model.

    python bench/train_cache_speedup.py [--arch timm:efficientnet_lite0] [--blocks 13-14]
        [--train 1000] [--image-size 64] [--epochs 5] [--threads N] [-o out/cache_speedup]

The cached path runs the frozen blocks once over the data, then trains on the stored
activations; the full path runs them on every step. Writes OUT/cache_speedup.{json,txt}.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads crawl on shared cores

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402


@dataclass
class Speedup:
    blocks: list[int]
    train_images: int
    epochs: int
    image_size: int
    cached_train_seconds: float  # training loop on stored activations
    cache_seconds: float  # one-time frozen pass over train + val (what caching costs)
    full_train_seconds: float  # training loop recomputing the frozen blocks every step
    same_model: bool  # bit-identical weights from both paths
    val_accuracy: float
    threads: int

    @property
    def speedup_loop(self) -> float:
        return self.full_train_seconds / self.cached_train_seconds

    @property
    def speedup_total(self) -> float:
        return self.full_train_seconds / (self.cached_train_seconds + self.cache_seconds)


def measure(base, train, val, blocks: list[int], config) -> Speedup:
    """Train `blocks` once with the cache and once without; same config and seed."""
    import torch
    from dataclasses import replace

    from subtune.training.trainer import Trainer

    cached_trainer = Trainer(base, train, val, config=replace(config, cache=True), log=lambda m: None)
    cached = cached_trainer.subtune(blocks)
    full = Trainer(base, train, val, config=replace(config, cache=False), log=lambda m: None).subtune(blocks)
    same = all(torch.equal(a, b) for a, b in zip(cached.net.state_dict().values(), full.net.state_dict().values()))
    return Speedup(list(blocks), len(train), config.epochs, train.image_size[0], cached.seconds,
                   cached_trainer.cache_seconds, full.seconds, same, cached.val_accuracy, torch.get_num_threads())


def format_speedup(s: Speedup) -> str:
    return "\n".join([
        f"{'blocks %d-%d' % (s.blocks[0], s.blocks[-1]) if len(s.blocks) > 1 else 'block %d' % s.blocks[0]}, "
        f"{s.train_images} training images at {s.image_size}px, "
        f"{s.epochs} epochs, {s.threads} thread(s)",
        f"  full forward path:   {s.full_train_seconds:8.1f} s",
        f"  cached activations:  {s.cached_train_seconds:8.1f} s training + {s.cache_seconds:.1f} s caching (once)",
        f"  speed-up: {s.speedup_loop:.1f}x (training loop), {s.speedup_total:.1f}x (including the caching pass)",
        f"  same model from both paths: {s.same_model}; validation accuracy {s.val_accuracy:.4f}",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="timm:efficientnet_lite0")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--blocks", default="13-14")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--val", type=int, default=250)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("-o", "--out", default="out/cache_speedup")
    args = p.parse_args(argv)

    import torch

    from subtune.models.blocks import parse_blocks
    from subtune.training.trainer import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    base = pretrained_base(args.arch)
    train, val = labelled_splits(base, args.data, args.train, args.val, args.image_size)
    blocks = parse_blocks(args.blocks, base.build()[1])
    result = measure(base, train, val, blocks, TrainConfig(epochs=args.epochs, seed=args.seed))
    text = format_speedup(result)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cache_speedup.json"), "w") as f:
        json.dump({**asdict(result), "speedup_loop": result.speedup_loop, "speedup_total": result.speedup_total,
                   "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                   "torch": torch.__version__}, f, indent=2)
    with open(os.path.join(args.out, "cache_speedup.txt"), "w") as f:
        f.write(text + "\n")
    return 0


def pretrained_base(arch: str):
    """The ImageNet-pretrained base for architectures with packaged weights, else random (said so)."""
    from subtune.models import make_base
    from subtune.weights import PRETRAINED_PACKAGES, load_state_dict, pretrained_package_path

    if arch in PRETRAINED_PACKAGES:
        return make_base(arch, weights=load_state_dict(pretrained_package_path(arch)))
    print(f"note: no packaged weights for {arch}: random weights (timings only)", file=sys.stderr)
    return make_base(arch, seed=0)


def labelled_splits(base, spec: str, n_train: int, n_val: int, image_size: int, seed: int = 0):
    """Exactly n_train / n_val class-balanced images, both carved from one pool of n_train + n_val."""
    from subtune.models import get_adapter
    from subtune.training.data import load_dataset

    mean, std = get_adapter(base.arch)[0].normalization(base.build()[0])
    kw = dict(image_size=image_size, mean=mean, std=std, limit=n_train + n_val, val_split=n_val / (n_train + n_val),
              seed=seed)
    return load_dataset(spec, "train", **kw), load_dataset(spec, "val", **kw)


if __name__ == "__main__":
    began = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - began:.0f} s)", file=sys.stderr)
    sys.exit(code)
