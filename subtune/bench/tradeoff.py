"""Accuracy against added latency (the paper's Figure 4): for each candidate window of a
finetuning profile, the latency the compiled graph adds over the base alone, the Pareto front,
and the most accurate window within a latency budget.

Profile JSON (`subtune profile` writes it; this is all that is read, other keys are ignored):

    [{"blocks": [13, 14], "accuracy": 0.871}, {"blocks": [16, 16], "accuracy": 0.853}, ...]

or an object holding that list under "entries" (`{"arch": ..., "entries": [...]}`; an "arch"
there must match the base's). `blocks` is the window's first and last block, 1-based and
inclusive, as elsewhere in subtune; `accuracy` is any score where higher is better.

Each window is measured with a synthetic task on it (latency depends on which blocks are
tuned, not on the tuned values), timed interleaved with the base alone so drift hits both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from subtune.bench.harness import Protocol, Timing, progress_bar, time_interleaved
from subtune.bench.machine import machine_info
from subtune.bench.variants import RuntimeSpec, VariantBuilder, prepare_runtime, random_images
from subtune.errors import SubtuneError
from subtune.formats import BaseModel


@dataclass(frozen=True)
class ProfileEntry:
    first: int
    last: int
    accuracy: float

    @property
    def window(self) -> tuple[int, int]:
        return (self.first, self.last)

    @property
    def label(self) -> str:
        return f"{self.first}" if self.first == self.last else f"{self.first}-{self.last}"


def load_profile(path: str | Path, arch: str | None = None) -> list[ProfileEntry]:
    """`arch`: the base's architecture, checked against the profile's "arch" when it has one."""
    path = Path(path)
    if not path.is_file():
        raise SubtuneError(f"profile file {path} not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SubtuneError(f"profile {path}: not valid JSON ({e})") from None
    made_for = data.get("arch") if isinstance(data, dict) else None
    if arch and made_for and made_for != arch:
        raise SubtuneError(f"profile {path} was made for {made_for}, but the base is {arch}: pass the base it was made for")
    return parse_profile(data, str(path))


def parse_profile(data: Any, where: str = "profile") -> list[ProfileEntry]:
    entries = data.get("entries") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise SubtuneError(f"{where}: expected a non-empty list of {{\"blocks\": [first, last], \"accuracy\": x}} "
                           "entries (or an object with such a list under \"entries\")")
    parsed = []
    for i, e in enumerate(entries):
        try:
            first, last = (int(b) for b in e["blocks"])
            accuracy = float(e["accuracy"])
        except (KeyError, TypeError, ValueError):
            raise SubtuneError(f"{where}: entry {i} is {json.dumps(e)[:120]}; expected "
                               "{\"blocks\": [first, last], \"accuracy\": number}") from None
        if not 1 <= first <= last:
            raise SubtuneError(f"{where}: entry {i} has blocks [{first}, {last}]; expected 1 <= first <= last")
        parsed.append(ProfileEntry(first, last, accuracy))
    return parsed


@dataclass
class WindowPoint:
    first: int
    last: int
    accuracy: float
    added_ms: float
    base: Timing
    compiled: Timing
    on_front: bool = False

    @property
    def label(self) -> str:
        return f"{self.first}" if self.first == self.last else f"{self.first}-{self.last}"


@dataclass
class TradeoffResult:
    machine: dict
    runtime: dict
    protocol: Protocol
    batch: int
    input_size: tuple[int, int]
    points: list[WindowPoint]
    budget_ms: float | None = None
    chosen: WindowPoint | None = field(default=None)


def pareto_front(points: Sequence[WindowPoint]) -> list[WindowPoint]:
    """Points no other point beats on both counts (less added latency and more accuracy),
    cheapest first."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p.added_ms, -p.accuracy)):
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front


def best_within(points: Sequence[WindowPoint], budget_ms: float) -> WindowPoint | None:
    """The most accurate window adding at most `budget_ms` (the cheaper one on ties)."""
    fits = [p for p in points if p.added_ms <= budget_ms]
    return max(fits, key=lambda p: (p.accuracy, -p.added_ms)) if fits else None


def measure_tradeoff(base: BaseModel, entries: list[ProfileEntry], *, batch: int, protocol: Protocol,
                     runtime: RuntimeSpec = RuntimeSpec(), input_size: tuple[int, int] | None = None,
                     threads: int | None = None, budget_ms: float | None = None,
                     show_progress: bool = True) -> TradeoffResult:
    from subtune.synthetic import synthetic_task

    input_size = tuple(input_size or base.input_size)
    runtime = prepare_runtime(runtime, threads)
    _, backbone = base.build()
    n = backbone.num_blocks
    for e in entries:
        if e.last > n:
            raise SubtuneError(f"profile window blocks {e.label} is out of range: {base.arch} has blocks 1..{n}")
    windows = sorted({e.window for e in entries})
    tasks = {w: synthetic_task(base, f"window_{w[0]}_{w[1]}", list(range(w[0], w[1] + 1)), seed=i, backbone=backbone)
             for i, w in enumerate(windows)}
    images = random_images(batch, input_size)
    measured: dict[tuple[int, int], tuple[Timing, Timing]] = {}
    with VariantBuilder(base, list(tasks.values()), input_size=input_size, runtime=runtime) as builder, \
            progress_bar("windows" if show_progress else None, len(windows), "window") as bar:
        base_variant = builder.variant("base")
        for w in windows:
            compiled = builder.variant("compiled", [tasks[w]])
            timed = time_interleaved({"base": lambda: base_variant.run(images), "compiled": lambda: compiled.run(images)},
                                     batch=batch, protocol=protocol)
            measured[w] = (timed["base"], timed["compiled"])
            builder.release(compiled)  # one window's graph in memory at a time
            bar.update(1)
        described = base_variant.describe()
    points = [WindowPoint(e.first, e.last, e.accuracy, measured[e.window][1].median_ms - measured[e.window][0].median_ms,
                          *measured[e.window]) for e in entries]
    for p in pareto_front(points):
        p.on_front = True
    chosen = best_within(points, budget_ms) if budget_ms is not None else None
    return TradeoffResult(machine_info(runtime.threads), described, protocol, batch, input_size, points, budget_ms, chosen)
