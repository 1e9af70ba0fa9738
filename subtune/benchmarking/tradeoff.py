"""Accuracy against added latency (the paper's Figure 4): for each candidate window of a
finetuning profile, the latency the compiled graph adds over the base alone, the Pareto front,
and the most accurate window within a latency budget.

Profile JSON (`subtune profile` writes it; this is all that is read, other keys are ignored):

    [{"blocks": [13, 14], "accuracy": 0.871}, {"blocks": [16, 16], "accuracy": 0.853}, ...]

or an object holding that list under "entries" (`{"arch": ..., "entries": [...]}`; an "arch"
there must match the base's). `blocks` is the window's first and last block, 1-based and
inclusive, as elsewhere in subtune; `accuracy` is any score where higher is better.

Other methods (issue 14) can stand beside the windows. An entry may name its method and, for a
tap task (no fork: Head2Toe, the linear probe), what the head reads instead of blocks:

    {"method": "linear", "accuracy": 0.78}                       # a head on the base's features
    {"method": "head2toe", "accuracy": 0.80,
     "taps": {"points": [1, 5, 18], "grid": 2, "selected": 1024}} # pooled taps, 1024 features kept
    {"method": "lora", "blocks": [1, 16], "accuracy": 0.83}       # merged LoRA = a window

A profile's "baselines" (`subtune profile --baselines linear,head2toe,lora`) are read as such
entries too. A results.json of bench/methods.py is read as such entries (validation accuracy, the first
seed's task shape; full finetuning is left out: it is a second model, not a task). Full tasks
are not needed: latency depends on which blocks are tuned or which points are tapped, not on
the values.

Each window (or tap set) is measured with a synthetic task of that shape, timed interleaved with
the base alone so drift hits both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from subtune.benchmarking.harness import Protocol, Timing, progress_bar, time_interleaved
from subtune.machine import machine_info
from subtune.benchmarking.variants import RuntimeSpec, VariantBuilder, prepare_runtime, random_images
from subtune.errors import SubtuneError
from subtune.models import BaseModel


@dataclass(frozen=True)
class ProfileEntry:
    first: int  # 0 for a tap entry (no blocks)
    last: int
    accuracy: float
    method: str | None = None  # None: a plain profile window
    taps: tuple | None = None  # tap entries: (points, grid, selected features or None)

    @property
    def window(self) -> tuple:
        return (self.first, self.last) if self.taps is None else ("taps", self.taps)

    @property
    def label(self) -> str:
        blocks = f"{self.first}" if self.first == self.last else f"{self.first}-{self.last}"
        if self.method is None:
            return blocks
        return self.method if self.taps is not None else f"{self.method} ({blocks})"


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
    if isinstance(data, dict) and isinstance(data.get("methods"), dict):  # bench/methods.py results
        made_for = (data.get("protocol") or {}).get("arch")
        if arch and made_for and made_for != arch:
            raise SubtuneError(f"methods results {path} were made for {made_for}, but the base is {arch}")
        return methods_entries(data, str(path))
    if arch and made_for and made_for != arch:
        raise SubtuneError(f"profile {path} was made for {made_for}, but the base is {arch}: pass the base it was made for")
    entries = parse_profile(data, str(path))
    if isinstance(data, dict) and isinstance(data.get("baselines"), dict):
        entries += baseline_entries(data["baselines"], str(path))
    return entries


def baseline_entries(baselines: dict, where: str = "profile") -> list[ProfileEntry]:
    """A `subtune profile --baselines` profile's baselines as method entries: the linear probe and
    Head2Toe are taps (their first seed's taps), LoRA on every block a window; full finetuning is
    left out (a second whole model, not a task the graph can hold)."""
    as_methods = {name: {"accuracy": e.get("accuracy"), "blocks": e.get("blocks"),
                         "method": ((e.get("runs") or [{}])[0]).get("method")}
                  for name, e in baselines.items() if name != "full" and isinstance(e, dict)}
    return methods_entries({"methods": as_methods}, f"{where} (baselines)") if as_methods else []


def methods_entries(data: dict, where: str = "methods results") -> list[ProfileEntry]:
    """Entries from bench/methods.py's results.json: validation accuracy, each method's shape."""
    entries = []
    for name, e in data["methods"].items():
        try:
            if name == "full":
                continue  # a whole second model, not a task the graph can hold
            if name == "linear":
                entries.append({"method": name, "accuracy": e["accuracy"]})
            elif name == "head2toe":
                m = e["method"]
                entries.append({"method": name, "accuracy": e["accuracy"],
                                "taps": {"points": m["taps_kept"], "grid": m["grid"], "selected": m["selected"]}})
            else:
                entries.append({"method": name, "blocks": e["blocks"], "accuracy": e["accuracy"]})
        except (KeyError, TypeError, AttributeError):
            raise SubtuneError(f"{where}: method {name!r} lacks what an entry needs (accuracy, blocks or taps); "
                               "rerun bench/methods.py") from None
    return parse_profile(entries, where)


def parse_profile(data: Any, where: str = "profile") -> list[ProfileEntry]:
    entries = data.get("entries") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise SubtuneError(f"{where}: expected a non-empty list of {{\"blocks\": [first, last], \"accuracy\": x}} "
                           "entries (or an object with such a list under \"entries\")")
    parsed = []
    for i, e in enumerate(entries):
        method = e.get("method") if isinstance(e, dict) else None
        if method is not None and (e.get("taps") is not None or (method == "linear" and "blocks" not in e)):
            parsed.append(_tap_entry(e, i, where))
            continue
        try:
            first, last = (int(b) for b in e["blocks"])
            accuracy = float(e["accuracy"])
        except (KeyError, TypeError, ValueError):
            raise SubtuneError(f"{where}: entry {i} is {json.dumps(e)[:120]}; expected "
                               "{\"blocks\": [first, last], \"accuracy\": number}") from None
        if not 1 <= first <= last:
            raise SubtuneError(f"{where}: entry {i} has blocks [{first}, {last}]; expected 1 <= first <= last")
        parsed.append(ProfileEntry(first, last, accuracy, None if method is None else str(method)))
    return parsed


def _tap_entry(e: dict, i: int, where: str) -> ProfileEntry:
    try:
        accuracy = float(e["accuracy"])
        taps = e.get("taps")
        if taps is None:  # the linear probe: the features only
            spec = (None, None, None)
        else:
            spec = (tuple(int(p) for p in taps["points"]), int(taps.get("grid", 2)),
                    None if taps.get("selected") is None else int(taps["selected"]))
    except (KeyError, TypeError, ValueError):
        raise SubtuneError(f"{where}: entry {i} is {json.dumps(e)[:120]}; a tap entry is {{\"method\": name, "
                           "\"accuracy\": x, \"taps\": {\"points\": [...], \"grid\": g, \"selected\": k}}") from None
    return ProfileEntry(0, 0, accuracy, str(e["method"]), spec)


def _tap_task(base: BaseModel, backbone, name: str, spec: tuple, input_size: tuple[int, int], seed: int):
    """A tap task of the entry's shape with random head and selection (latency only)."""
    import torch

    from subtune.delta import make_tap_task
    from subtune.training.head2toe import tap_specs

    n = backbone.num_blocks
    points, grid, selected = spec
    if points is None:
        specs = [{"point": n + 2, "grid": None, "dim": backbone.feature_dim}]
    else:
        if any(p < 1 or p > n + 2 for p in points):
            raise SubtuneError(f"tap points {list(points)} out of range: {base.arch} has points 1..{n + 2}")
        specs = tap_specs(backbone, sorted(set(points)), grid, input_size)
    total = sum(s["dim"] for s in specs)
    g = torch.Generator().manual_seed(seed)
    select = None if selected is None else torch.sort(torch.randperm(total, generator=g)[:min(selected, total)]).values
    torch.manual_seed(seed)
    head = torch.nn.Linear(total if select is None else len(select), 10)
    return make_tap_task(base, name, specs, head, select=select, input_size=input_size)


@dataclass
class WindowPoint:
    first: int
    last: int
    accuracy: float
    added_ms: float
    base: Timing
    compiled: Timing
    on_front: bool = False
    name: str | None = None  # the entry's label when it is not a plain window

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
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
    windows = sorted({e.window for e in entries}, key=repr)
    tasks = {}
    for i, w in enumerate(windows):
        if w[0] == "taps":
            tasks[w] = _tap_task(base, backbone, f"taps_{i}", w[1], input_size, seed=i)
        else:
            tasks[w] = synthetic_task(base, f"window_{w[0]}_{w[1]}", list(range(w[0], w[1] + 1)), seed=i,
                                      backbone=backbone)
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
                          *measured[e.window], name=None if e.method is None else e.label) for e in entries]
    for p in pareto_front(points):
        p.on_front = True
    chosen = best_within(points, budget_ms) if budget_ms is not None else None
    return TradeoffResult(machine_info(runtime.threads), described, protocol, batch, input_size, points, budget_ms, chosen)
