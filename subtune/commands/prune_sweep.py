from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from subtune.commands.prune import add_data_arguments

    p.add_argument("task", help="task delta file (subtune.task/1), not yet pruned")
    p.add_argument("--base", required=True, help="the base file the task was trained from")
    p.add_argument("--data", required=True, help="the task's data (fashion-mnist, imagefolder:DIR, ...)")
    p.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="pruning ratios, comma-separated")
    p.add_argument("--scopes", default="local,global", help="local and/or global")
    p.add_argument("--norms", default="l1,l2", help="l1 and/or l2")
    p.add_argument("--round-to", type=int, help="keep channel counts multiples of this (e.g. 8)")
    add_data_arguments(p)
    p.add_argument("-o", "--output", required=True, help="sweep JSON")
    p.add_argument("--plot", help="PNG of accuracy against parameters kept (default: beside the output, .png)")
    from subtune.commands.profile import add_ray_arguments

    add_ray_arguments(p)


def run(args: argparse.Namespace) -> int:
    import contextlib

    from tqdm import tqdm

    from subtune.atomic import check_writable, write_text
    from subtune.commands.prune import TaskData, frozen_backbone
    from subtune.formats import load_base, load_task, validate_task
    from subtune.pruning.plan import PruneOptions
    from subtune.pruning.sweep import plot_sweep, run_sweep, sweep_table

    ratios = _floats(args.ratios)
    scopes = _choices(args.scopes, ("local", "global"), "--scopes")
    norms = _choices(args.norms, ("l1", "l2"), "--norms")
    for r in ratios:
        PruneOptions(r, norms[0], scopes[0], args.round_to).check()
    out = check_writable(args.output)
    plot_path = check_writable(Path(args.plot) if args.plot else out.with_suffix(".png"))
    base, task = load_base(args.base), load_task(args.task)
    backbone = frozen_backbone(base)
    validate_task(task, base, backbone)
    data = TaskData(args, task, base, backbone)
    total = len(ratios) * len(scopes) * len(norms)
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=total, desc="pruning sweep [serial]", unit="point", disable=None))

        def on_ray(work):
            from subtune.cluster import RayMap

            pool = stack.enter_context(RayMap(work, address=None if args.ray == "local" else args.ray,
                                              cpus_per_run=args.ray_cpus_per_run, gpus_per_run=args.ray_gpus_per_run))
            bar.set_description(f"pruning sweep [{pool.describe()}]")
            return pool

        sweep = run_sweep(task, base, backbone, data.test, train=data.train, config=data.config, ratios=ratios,
                          scopes=scopes, norms=norms, round_to=args.round_to, on_point=lambda _: bar.update(1),
                          executor=on_ray if args.ray else None)
    result = {"task": args.task, "data": data.describe(), **sweep.to_json()}
    write_text(out, json.dumps(result, indent=2))
    plot_sweep(sweep, plot_path)
    print(sweep_table(sweep))
    print(f"wrote {out} and {plot_path}")
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
