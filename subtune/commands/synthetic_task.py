from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="base file")
    p.add_argument("--blocks", required=True, help="e.g. 13-14 or a stage name such as layer3")
    p.add_argument("--name", required=True)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--siamese", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.05, help="relative noise added to the base block weights")
    p.add_argument("-o", "--output", required=True)


def run(args: argparse.Namespace) -> int:
    from subtune.atomic import check_writable
    from subtune.formats import load_base, save_task
    from subtune.models.blocks import parse_blocks
    from subtune.synthetic import synthetic_task

    check_writable(args.output)
    base = load_base(args.base)
    _, backbone = base.build()
    blocks = parse_blocks(args.blocks, backbone)
    task = synthetic_task(base, args.name, blocks, num_classes=args.num_classes, siamese=args.siamese,
                          seed=args.seed, noise=args.noise, backbone=backbone)
    save_task(args.output, task)
    print(f"wrote {args.output}: synthetic task {args.name!r} on blocks {blocks[0]}-{blocks[-1]} (for tests and benchmarks)")
    return 0
