"""Command-line options shared by `subtune train`, `profile` and `select`, and turning them into
datasets and a TrainConfig. Parsing stays import-light: torch is imported only when run."""

from __future__ import annotations

import argparse


def add_data_arguments(p: argparse.ArgumentParser, *, test: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True,
                   help="fashion-mnist, imagefolder:DIR (DIR/train, DIR/val, DIR/test or DIR/<class>), "
                        "cifar10:DIR or cifar100:DIR (torchvision's on-disk format)")
    g.add_argument("--image-size", type=int, help="resize images to this size (default: the base's input size)")
    g.add_argument("--limit", type=int, help="class-balanced subset of the labelled pool (the low-data regime); "
                                              "validation is carved from it")
    g.add_argument("--val-split", type=float,
                   help="fraction of the pool held out for validation (default 0.2 unless the data has a val/ folder)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the subset and the validation split (default 0)")
    g.add_argument("--label-map", help="coarser classes: 'tops=0,2,4,6;bottoms=1,3;...' (indices or names) or a JSON file")
    if test:
        g.add_argument("--test", action="store_true",
                       help="also report accuracy on the test split (after training; never used to choose)")
        g.add_argument("--test-limit", type=int, help="class-balanced subset of the test split")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: the paper's Appendix A)")
    g.add_argument("--epochs", type=int, help="default 10, or 50 with at most 1,000 training images")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--seed", type=int, default=0, help="training seed: head initialisation, batch order, augmentation")
    g.add_argument("--augment", default="none", choices=["none", "flip", "crop-flip"],
                   help="image augmentation; anything but none disables cached activations for training")
    g.add_argument("--freeze-bn", action="store_true",
                   help="keep the tuned blocks' BatchNorm statistics frozen (default: they update, as in the paper)")
    add_cache_arguments(p)


def add_cache_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cached activations (paper §3.2)")
    g.add_argument("--no-cache", action="store_true",
                   help="run the frozen layers on every training step instead of caching their output")
    g.add_argument("--cache-dir", help="keep activations that exceed the memory budget in a file here")
    g.add_argument("--cache-memory", type=float, help="memory budget for cached activations in GiB "
                                                      "(default: half the available memory, at most 16)")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")


def prepare_runtime(args: argparse.Namespace) -> None:
    """Call before importing torch. OpenMP threads that spin while waiting made training up to
    20x slower on a shared 2-core machine; sleeping threads cost little elsewhere. An
    OMP_WAIT_POLICY set by the user wins; once torch is loaded the variable has no effect."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if getattr(args, "threads", None):
        import torch

        from subtune.errors import SubtuneError

        if args.threads < 1:
            raise SubtuneError("--threads must be at least 1")
        torch.set_num_threads(args.threads)


def normalisation(base) -> tuple[list[float], list[float]]:
    from subtune.models import get_adapter

    model, _ = base.build()
    return get_adapter(base.arch)[0].normalization(model)


def load_splits(args: argparse.Namespace, base, *, test: bool | None = None):
    """(train, val, test or None) for the base's normalisation and the chosen image size."""
    from subtune.training.data import load_dataset

    mean, std = normalisation(base)
    size = args.image_size or base.input_size
    common = dict(image_size=size, mean=mean, std=std, seed=args.data_seed, label_map=args.label_map)
    train = load_dataset(args.data, "train", limit=args.limit, val_split=args.val_split, **common)
    val = load_dataset(args.data, "val", limit=args.limit, val_split=args.val_split, **common)
    want_test = args.test if test is None else test
    test_ds = load_dataset(args.data, "test", limit=args.test_limit, **common) if want_test else None
    return train, val, test_ds


def train_config(args: argparse.Namespace, train_images: int):
    from subtune.training.trainer import TrainConfig, default_epochs

    return TrainConfig(epochs=args.epochs or default_epochs(train_images), lr=args.lr, weight_decay=args.weight_decay,
                       batch_size=args.batch_size, seed=args.seed, augment=args.augment, freeze_bn=args.freeze_bn,
                       cache=not args.no_cache)


def cache_options(args: argparse.Namespace) -> dict:
    budget = None if args.cache_memory is None else int(args.cache_memory * 2**30)
    return {"cache_dir": args.cache_dir, "memory_budget": budget}


def data_summary(train, val, test) -> str:
    parts = [f"{len(train)} train", f"{len(val)} val"] + ([f"{len(test)} test"] if test is not None else [])
    dropped = train.info.get("dropped_classes")
    note = f"; dropped classes {dropped}" if dropped else ""
    return (f"{train.info['spec']}: {' / '.join(parts)} images, {len(train.classes)} classes, "
            f"{train.image_size[0]}x{train.image_size[1]}{note}")
