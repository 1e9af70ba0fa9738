from __future__ import annotations

import argparse

from subtune.commands.training_flags import FLAGS  # noqa: F401 - the library's parameters as flags (cli)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from subtune.commands.training_flags import add_cache_arguments, add_thread_arguments

    p.add_argument("base", help="base file (subtune.base/1)")
    p.add_argument("task", help="task delta trained on the labelled images so far")
    p.add_argument("--pool", required=True, help="images to choose from: images:DIR (unlabelled), or a labelled "
                                                 "dataset spec whose labels are ignored (fashion-mnist, imagefolder:DIR, ...)")
    p.add_argument("--budget", type=int, required=True, help="how many images to pick for labelling")
    p.add_argument("-o", "--output", required=True, help="picks JSON to write")
    p.add_argument("--pool-split", default="pool", choices=["pool", "train", "val", "test"],
                   help="pool: all labelled-pool images (default; --pool-limit draws a subset); or one split")
    p.add_argument("--pool-limit", type=int, help="a seeded subset of the pool")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--label-map", help="as for `subtune train`, so a labelled pool's classes match the task's")
    p.add_argument("--exclude", help="JSON from an earlier `subtune select` (or a list of ids): never pick these again")
    p.add_argument("--include-training", action="store_true",
                   help="allow picking the images the task was trained and validated on (excluded by default when "
                        "the pool is the task's training data)")
    p.add_argument("--batch-size", type=int, default=256)
    add_cache_arguments(p, no_cache=False)  # the frozen prefix always runs once over the pool
    add_thread_arguments(p)


def run(args: argparse.Namespace) -> int:
    from subtune.commands.training_flags import passive_openmp

    passive_openmp()
    from subtune.api import select

    result = select(args.base, args.task, args.pool, args.budget, args.output, pool_split=args.pool_split,
                    pool_limit=args.pool_limit, data_seed=args.data_seed, label_map=args.label_map,
                    exclude=args.exclude, include_training=args.include_training, batch_size=args.batch_size,
                    cache_dir=args.cache_dir, cache_memory=args.cache_memory, threads=args.torch_threads,
                    on_progress=print)
    r, rows = result.report, result.picks
    first = (r["blocks"] or [None])[0]
    if first is None:  # a tap task (Head2Toe, linear probe) reads the images: nothing frozen is cached
        prefix = "nothing"
    else:
        prefix = "the stem" if first == 1 else f"stem and blocks 1-{first - 1}"
    note = (f" (the pool holds only {result.available} images that are not excluded)"
            if result.available < args.budget else "")
    print(f"picked {len(rows)} of {r['pool_size']} pool images with the smallest margins{note}: "
          f"{rows[0]['margin']:.4f} to {rows[-1]['margin']:.4f}; frozen prefix ran once over the pool in "
          f"{result.prefix_seconds:.1f} s ({prefix} cached); {r['excluded']} excluded")
    print(f"wrote {result.output}")
    return 0
