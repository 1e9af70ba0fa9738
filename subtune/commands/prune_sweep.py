from __future__ import annotations

import argparse

from subtune.commands.training_flags import FLAGS  # noqa: F401 - the library's parameters as flags (cli)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from subtune.commands.prune import add_base_and_task, add_data_arguments

    add_base_and_task(p)
    p.add_argument("--data", required=True, help="the task's data (fashion-mnist, imagefolder:DIR, ...)")
    p.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="pruning ratios, comma-separated")
    p.add_argument("--scopes", default="local,global", help="local and/or global")
    p.add_argument("--norms", default="l1,l2", help="l1 and/or l2")
    p.add_argument("--round-to", type=int, help="keep channel counts multiples of this (e.g. 8)")
    add_data_arguments(p)
    p.add_argument("-o", "--output", required=True, help="sweep JSON")
    p.add_argument("--plot", help="PNG of accuracy against parameters kept (default: beside the output, .png)")
    from subtune.commands.training_flags import add_ray_arguments

    add_ray_arguments(p)


def run(args: argparse.Namespace) -> int:
    from subtune.commands.prune import base_and_task
    from subtune.commands.training_flags import ray_options

    base, task = base_and_task(args)
    ray = ray_options(args)
    from subtune.api import prune_sweep
    from subtune.pruning.sweep import sweep_table

    result = prune_sweep(base, task, args.data, args.output, ratios=_floats(args.ratios),
                         scopes=_choices(args.scopes, ("local", "global"), "--scopes"),
                         norms=_choices(args.norms, ("l1", "l2"), "--norms"), round_to=args.round_to,
                         plot=args.plot or True, label_map=args.label_map, limit=args.limit,
                         test_limit=args.test_limit, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         seed=args.seed, ray=ray, progress=True)
    print(sweep_table(result.sweep))
    print(f"wrote {result.output} and {result.plot_path}")
    return 0


def _floats(text: str) -> list[float]:
    from subtune.errors import SubtuneError

    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise SubtuneError(f"--ratios expects comma-separated fractions such as 0.1,0.5, found {text!r}") from None


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    from subtune.errors import SubtuneError

    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values or any(v not in allowed for v in values):
        raise SubtuneError(f"{flag} expects {' and/or '.join(allowed)}, comma-separated; found {text!r}")
    return values
