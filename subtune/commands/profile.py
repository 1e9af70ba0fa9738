from __future__ import annotations

import argparse

from subtune.commands.flag_values import int_list
from subtune.commands.training_flags import (FLAGS, add_data_arguments, add_ray_arguments,  # noqa: F401 - FLAGS: cli
                                             add_training_arguments)
from subtune.errors import SubtuneError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="base file (subtune.base/1)")
    p.add_argument("-o", "--output", required=True, help="profile JSON to write")
    p.add_argument("--plot", help="PNG of the profile (default: beside the output, .png)")
    p.add_argument("--window", type=int, default=1, choices=[1, 2, 3], help="consecutive blocks per run (default 1)")
    p.add_argument("--starts", help="only windows starting at these blocks: FIRST-LAST or a list (default: all)")
    p.add_argument("--seeds", default=None, help="training seeds, e.g. 0,1,2: mean and std per window (default: --seed)")
    p.add_argument("--baselines", nargs="?", const="linear,full", default=None, metavar="LIST",
                   help="also baselines, one row each: a comma list of linear, head2toe, lora (LoRA on every block), "
                        "full (bare --baselines: linear,full); subtune-bench --profile reads them beside the windows")
    p.add_argument("--siamese", action="store_true", help="profile Siamese SubTuning (§5.1)")
    p.add_argument("--runs", help="folder of finished runs, one JSON each, written as each run ends; a rerun "
                                  "skips them (default: beside the output, .runs)")
    add_ray_arguments(p)
    add_data_arguments(p)
    add_training_arguments(p)


def run(args: argparse.Namespace) -> int:
    import sys

    from subtune.commands.training_flags import data_options, passive_openmp, ray_options, training_options

    passive_openmp()
    from subtune.api import ProfileInterrupted, profile

    seeds = int_list(args.seeds, "--seeds", distinct=True) if args.seeds else None
    starts = _blocks(args.starts) if args.starts else None
    try:
        result = profile(args.base, args.data, args.output, window=args.window, seeds=seeds, starts=starts,
                         siamese=args.siamese, baselines=args.baselines, runs=args.runs, plot=args.plot or True,
                         data_options=data_options(args), training=training_options(args), ray=ray_options(args),
                         threads=args.torch_threads, on_progress=lambda line: print(line, flush=True), progress=True)
    except ProfileInterrupted as e:
        # one line, exit status 130; every finished run is already on disk (RunLog writes each as it ends)
        print(f"subtune profile: interrupted; {e.saved} of {e.total} runs are saved in {e.runs}: "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    prof, best = result.profile, result.best
    print(f"best window: blocks {best['blocks'][0]}-{best['blocks'][1]} (validation {best['accuracy']:.4f}); "
          f"{prof.seconds:.1f} s in all, {prof.cache_seconds:.1f} s caching frozen activations")
    print(f"wrote {result.output} and {result.plot_path} (each run's result in {result.runs})")
    return 0


def _blocks(text: str) -> list[int]:
    if "-" in text:
        try:
            lo, hi = (int(x) for x in text.split("-", 1))
        except ValueError:
            raise SubtuneError(f"--starts expects FIRST-LAST or a list, found {text!r}") from None
        if hi < lo:
            raise SubtuneError(f"--starts expects FIRST-LAST with FIRST <= LAST, found {text!r}")
        return list(range(lo, hi + 1))
    return int_list(text, "--starts", distinct=True)
