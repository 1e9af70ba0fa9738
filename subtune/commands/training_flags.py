"""Flags shared by `subtune train`, `profile` and `select`, and the option objects they become
(subtune.training.options: DataOptions, TrainingOptions, RayOptions). Parsing stays
import-light: nothing heavy is imported until a command runs."""

from __future__ import annotations

import argparse
import os

from subtune.commands.flag_values import IMAGE_SIZE_HELP, add_deprecated, image_size, refuse_unless

# Library parameters (in error messages) -> these commands' flags, where the names differ.
FLAGS = {"rank": "--lora-rank", "alpha": "--lora-alpha", "method": "--mode", "threads": "--torch-threads",
         "cpus_per_run": "--ray-cpus-per-run", "gpus_per_run": "--ray-gpus-per-run", "address": "--ray"}


def add_data_arguments(p: argparse.ArgumentParser, *, test: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True,
                   help="fashion-mnist, imagefolder:DIR (DIR/train, DIR/val, DIR/test or DIR/<class>), "
                        "cifar10:DIR or cifar100:DIR (torchvision's on-disk format)")
    g.add_argument("--image-size", help=f"{IMAGE_SIZE_HELP}: the images are resized to it (default: the base's "
                                        "input size)")
    g.add_argument("--limit", type=int, help="class-balanced subset of the labelled pool (the low-data regime); "
                                              "validation is carved from it")
    g.add_argument("--val-split", type=float,
                   help="fraction of the pool held out for validation (default 0.2 unless the data has a val/ folder)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the subset and the validation split (default 0)")
    g.add_argument("--label-map", help="coarser classes: 'tops=0,2,4,6;bottoms=1,3;...' (indices or names) or a JSON file")
    if test:
        g.add_argument("--test", action="store_true",
                       help="also report accuracy on the test split (after training; never used to choose)")
        g.add_argument("--test-limit", type=int, help="with --test: a class-balanced subset of the test split")


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
    add_thread_arguments(p)


def add_cache_arguments(p: argparse.ArgumentParser, *, no_cache: bool = True) -> None:
    g = p.add_argument_group("cached activations (paper §3.2)")
    if no_cache:
        g.add_argument("--no-cache", action="store_true",
                       help="run the frozen layers on every training step instead of caching their output")
    g.add_argument("--cache-dir", help="keep activations that exceed the memory budget in a file here")
    g.add_argument("--cache-memory", type=float, help="memory budget for cached activations in GiB "
                                                      "(default: half the available memory, at most 16)")


def add_thread_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--torch-threads", type=int, metavar="N",
                   help="torch's intra-op CPU threads in this process (default: torch's choice, one per core); "
                        "Ray runs use --ray-cpus-per-run instead")
    add_deprecated(p, "--threads", "--torch-threads", "torch_threads", type=int)


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("running on Ray (pip install 'subtune[ray]')")
    g.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="each run a Ray task: alone, a local Ray instance sized to this machine; 'auto' or "
                        "HOST:PORT, a running cluster (`ray start --head`)")
    g.add_argument("--ray-cpus-per-run", type=float, default=1,
                   help="with --ray: CPUs each run declares, and its torch threads (default 1)")
    g.add_argument("--ray-gpus-per-run", type=float, default=0, help="with --ray: GPUs each run declares (default 0)")


def passive_openmp() -> None:
    """Before torch is imported: OpenMP threads that spin while waiting made training up to 20x
    slower on a shared 2-core machine; sleeping threads cost little elsewhere. The command owns
    its process, so it sets this (the library leaves the environment alone); an OMP_WAIT_POLICY
    set by the user wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def data_options(args: argparse.Namespace):
    from subtune.training.options import DataOptions

    return DataOptions(image_size=image_size(args.image_size), limit=args.limit, val_split=args.val_split,
                       seed=args.data_seed, label_map=args.label_map, test=getattr(args, "test", False),
                       test_limit=getattr(args, "test_limit", None))


def training_options(args: argparse.Namespace):
    from subtune.training.options import TrainingOptions

    return TrainingOptions(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                           seed=args.seed, augment=args.augment, freeze_bn=args.freeze_bn, cache=not args.no_cache,
                           cache_dir=args.cache_dir, cache_memory=args.cache_memory)


def ray_options(args: argparse.Namespace):
    refuse_unless(args, args.ray is not None, ("ray_cpus_per_run", "ray_gpus_per_run"),
                  "without --ray: Ray runs only")
    if args.ray is None:
        return None
    from subtune.training.options import RayOptions

    return RayOptions(args.ray, cpus_per_run=args.ray_cpus_per_run, gpus_per_run=args.ray_gpus_per_run)
