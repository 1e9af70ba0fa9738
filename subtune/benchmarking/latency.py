"""The latency of one model file at several batch sizes (`subtune-bench MODEL`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from subtune.benchmarking.harness import Protocol, Timing, time_interleaved
from subtune.machine import machine_info
from subtune.errors import SubtuneError

if TYPE_CHECKING:
    import numpy as np

    from subtune.runtimes.base import BaseRunner


@dataclass
class ModelLatency:
    model: str
    machine: dict
    runtime: dict
    protocol: Protocol
    timings: list[Timing]  # one per batch size


def random_feeds(runner: "BaseRunner", batch: int, seed: int = 0) -> dict[str, "np.ndarray"]:
    """Inputs for an active runner: its first axis set to `batch`; any other dynamic axis is an error.
    A bool input (a --task-select graph's `tasks` mask) is all true: every task on every image."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for name, spec in runner.input_metadata().items():
        shape = (batch, *spec.shape[1:])
        if any(d is None for d in shape):
            raise SubtuneError(f"input {name!r} has dynamic axes besides the batch ({spec.shape}); "
                               "subtune-bench sets only the batch size")
        dtype = np.dtype(spec.dtype)
        feeds[name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                       else np.ones(shape, dtype=dtype) if dtype.kind == "b" else np.zeros(shape, dtype=dtype))
    return feeds


def bench_runner(runner: "BaseRunner", *, model: str, batches: Sequence[int], protocol: Protocol,
                 threads: int | None, show_progress: bool = True, keep_samples: bool = False) -> ModelLatency:
    timings = []
    with runner:
        for batch in batches:
            feeds = random_feeds(runner, batch)
            timed = time_interleaved({model: lambda: runner.infer(feeds)}, batch=batch, protocol=protocol,
                                     progress=f"batch {batch}" if show_progress else None, keep_samples=keep_samples)
            timings.append(timed[model])
        described = runner.describe()
    return ModelLatency(model, machine_info(threads), described, protocol, timings)
