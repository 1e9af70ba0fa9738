"""The harness' own overhead on a trivial (one Identity node) model: the floor under every
latency subtune-bench reports (see subtune/benchmarking/overhead.py for what each line times).

    python bench/harness_overhead.py [--paper-protocol] [--threads 1]

Writes OUT/harness_overhead.{json,txt}, with the machine, versions and thread count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from subtune.benchmarking.harness import PAPER_PROTOCOL, Protocol
from subtune.benchmarking.overhead import measure_overhead
from subtune.benchmarking.report import overhead_table, save_result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warmup", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--paper-protocol", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: nothing to parallelise)")
    p.add_argument("-o", "--out", default="out/harness_overhead")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)  # fail before hours of timing, not after

    protocol = PAPER_PROTOCOL if args.paper_protocol else Protocol(warmup=100, iters=1000, repeats=10)
    protocol = Protocol(**{**protocol.__dict__, **{k: v for k in ("warmup", "iters", "repeats")
                                                   if (v := getattr(args, k)) is not None}})
    result = measure_overhead(protocol, threads=args.threads)
    text = overhead_table(result)
    print(text)
    for path in save_result(args.out, "harness_overhead", result, text):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
