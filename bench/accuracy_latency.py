"""The paper's Figure 4 on this machine: accuracy against the latency each window adds, with
the Pareto front, from a finetuning profile written by the trainer (format: see
subtune/benchmarking/tradeoff.py).

    python bench/accuracy_latency.py PROFILE.json --base base.pt [--budget-ms 2] [--batch 1]
    python bench/accuracy_latency.py PROFILE.json --arch torchvision:resnet50   # random base weights

Writes OUT/accuracy_latency.{json,txt,png}, with the machine, versions and thread count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from subtune.benchmarking import plots
from subtune.benchmarking.harness import protocol_from_flags
from subtune.benchmarking.report import save_result, tradeoff_table
from subtune.benchmarking.tradeoff import load_profile, measure_tradeoff
from subtune.formats import load_base
from subtune.models import make_base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--base", help="base file the profile was trained on")
    source.add_argument("--arch", help="or an architecture, with random weights (latency does not depend on them)")
    p.add_argument("--image-size", type=int, help="default: the architecture's")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--budget-ms", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--paper-protocol", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("-o", "--out", default="out/accuracy_latency")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)  # fail before hours of timing, not after

    protocol = protocol_from_flags(args)
    base = load_base(args.base) if args.base else make_base(args.arch, seed=0)
    entries = load_profile(args.profile, arch=base.arch)
    size = (args.image_size, args.image_size) if args.image_size else None
    result = measure_tradeoff(base, entries, batch=args.batch, protocol=protocol, input_size=size,
                              threads=args.threads, budget_ms=args.budget_ms)
    text = tradeoff_table(result)
    print(text)
    paths = save_result(args.out, "accuracy_latency", result, text)
    plots.plot_tradeoff(result, f"{args.out}/accuracy_latency.png")
    for path in [*paths, f"{args.out}/accuracy_latency.png"]:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
