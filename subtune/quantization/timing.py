"""A quick latency check of a reduced graph against its fp32 graph on ONNX Runtime CPU.

Not a benchmark (bench/int8_accuracy.py and bench/quantized_latency.py are): a few interleaved
rounds at batch 1 and 8, enough to say whether the reduced graph is faster on this host, recorded
in the compile report with the host's CPU flags. Timed as deployed: QDQ fusion on. A round runs
each graph as many times as it takes the slower one's warm-up run to fill MIN_ROUND_SECONDS (at
most RUNS): three runs of a millisecond graph, one of ResNet-50 at batch 8 (a second each), so the
check costs a few seconds whatever the graph's size.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

import numpy as np

from subtune.machine import cpu_flags
from subtune.runtimes.onnxruntime import every_task_feeds, session_from_bytes

BATCHES = (1, 8)
ROUNDS, RUNS = 5, 3  # rounds, and at most this many runs of each graph per round
MIN_ROUND_SECONDS = 0.2


def latency_ratios(fp32: bytes | Path, reduced: bytes | Path, images: np.ndarray, *, emulate_qdq: bool = False,
                   threads: int | None = None, batches=BATCHES, rounds: int = ROUNDS, runs: int = RUNS) -> dict:
    """{"batch_B": {"fp32_ms", "reduced_ms", "ratio"}} from interleaved rounds (medians)."""
    del emulate_qdq  # timed as deployed, whatever arithmetic the check emulates
    sessions = {"fp32": session_from_bytes(fp32, threads=threads),
                "reduced": session_from_bytes(reduced, threads=threads)}
    out = {"runtime": "ONNX Runtime CPU", "threads": threads or "default", "cpu_flags": cpu_flags(),
           "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    for batch in batches:
        x = np.resize(images, (batch, *images.shape[1:])).astype(np.float32)
        feeds = {k: every_task_feeds(s, x) for k, s in sessions.items()}  # --task-select graphs: every task asked
        times = {k: [] for k in sessions}
        warm = 0.0
        for name, s in sessions.items():  # warm-up
            start = time.perf_counter()
            s.run(None, feeds[name])
            warm = max(warm, time.perf_counter() - start)
        repeat = max(1, min(runs, math.ceil(MIN_ROUND_SECONDS / max(warm, 1e-6))))
        for _ in range(rounds):
            for name, s in sessions.items():
                start = time.perf_counter()
                for _ in range(repeat):
                    s.run(None, feeds[name])
                times[name].append((time.perf_counter() - start) / repeat * 1e3)
        f, r = statistics.median(times["fp32"]), statistics.median(times["reduced"])
        out[f"batch_{batch}"] = {"fp32_ms": round(f, 3), "reduced_ms": round(r, 3), "ratio": round(r / f, 3),
                                 "runs_per_round": repeat}
    return out
