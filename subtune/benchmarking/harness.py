"""The timing harness: the paper's protocol (Appendix A), with variants interleaved.

Protocol: warm each variant up, then R repeats; in each repeat every variant runs N timed
calls back to back. Variants take turns within each repeat (the order rotates from repeat to
repeat), so slow drift of the machine (thermal state, other load) hits every variant alike
instead of whichever ran last.

Statistics per variant (all in milliseconds):
    median   the median of the R per-repeat medians: the headline number
    mean     the mean of the per-repeat medians: the paper's statistic ("mean of 10 medians of 300")
    p90/p99  percentiles over all R*N calls: the tail
    spread   (max - min) of the per-repeat medians, relative to their median: large when the
             machine was noisy, so a noisy run reads as noisy

Each call is timed with perf_counter_ns around the callable and nothing else; the garbage
collector is paused while timing, as timeit does.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from subtune.errors import SubtuneError

NOISY_SPREAD = 0.05  # per-repeat medians more than 5% apart: flag the result as noisy


@dataclass(frozen=True)
class Protocol:
    warmup: int = 10
    iters: int = 30
    repeats: int = 5

    def __post_init__(self):
        if self.warmup < 0 or self.iters < 1 or self.repeats < 1:
            raise SubtuneError(f"timing protocol needs warmup >= 0, iters >= 1 and repeats >= 1; found "
                               f"warmup {self.warmup}, iters {self.iters}, repeats {self.repeats}")


PAPER_PROTOCOL = Protocol(warmup=300, iters=300, repeats=10)  # Appendix A, "Inference Time Measurement"


def protocol_from_flags(args) -> Protocol:
    """The protocol that --paper-protocol / --warmup / --iters / --repeats ask for: explicit
    counts win over either default."""
    chosen = PAPER_PROTOCOL if args.paper_protocol else Protocol()
    given = {k: getattr(args, k) for k in ("warmup", "iters", "repeats") if getattr(args, k) is not None}
    return Protocol(**{**chosen.__dict__, **given})


@dataclass
class Timing:
    """One variant's latency at one batch size."""

    batch: int
    repeat_medians_ms: list[float]
    median_ms: float
    mean_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    spread: float
    throughput: float  # images per second at the median latency
    samples_ms: list[list[float]] | None = field(default=None, repr=False)  # per repeat, when kept

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD


def summarize(samples_ms: list[list[float]], batch: int, keep_samples: bool = False) -> Timing:
    """Statistics over R repeats of N calls each (see the module docstring)."""
    medians = [statistics.median(r) for r in samples_ms]
    pooled = sorted(x for r in samples_ms for x in r)
    median = statistics.median(medians)
    return Timing(
        batch=batch,
        repeat_medians_ms=medians,
        median_ms=median,
        mean_ms=statistics.fmean(medians),
        p90_ms=_percentile(pooled, 90),
        p99_ms=_percentile(pooled, 99),
        min_ms=pooled[0],
        spread=(max(medians) - min(medians)) / median if median > 0 else 0.0,
        throughput=batch / (median / 1e3) if median > 0 else float("inf"),
        samples_ms=[list(r) for r in samples_ms] if keep_samples else None,
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (NumPy's default method)."""
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def time_interleaved(variants: dict[str, Callable[[], object]], *, batch: int, protocol: Protocol,
                     progress: str | None = None, keep_samples: bool = False) -> dict[str, Timing]:
    """Time each zero-argument callable under `protocol`, interleaved; returns {name: Timing}.

    `progress`: a title for a tqdm bar on stderr (shown on a terminal only)."""
    if not variants:
        raise SubtuneError("nothing to time: no variants given")
    names = list(variants)
    total = len(names) * (protocol.warmup + protocol.repeats * protocol.iters)
    samples: dict[str, list[list[float]]] = {n: [] for n in names}
    with progress_bar(progress, total) as bar:
        for name in names:
            call = variants[name]
            for _ in range(protocol.warmup):
                call()
            bar.update(protocol.warmup)
        for r in range(protocol.repeats):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(_timed_block(variants[name], protocol.iters))
                bar.update(protocol.iters)
    return {n: summarize(samples[n], batch, keep_samples) for n in names}


def _timed_block(call: Callable[[], object], iters: int) -> list[float]:
    clock = time.perf_counter_ns
    times = [0] * iters
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(iters):
            start = clock()
            call()
            times[i] = clock() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return [t / 1e6 for t in times]


def progress_bar(title: str | None, total: int, unit: str = "call"):
    """A tqdm bar on stderr, shown on a terminal only and never when `title` is None."""
    from tqdm import tqdm

    return tqdm(total=total, desc=title or "", unit=unit, file=sys.stderr, leave=False,
                disable=title is None or not sys.stderr.isatty())
