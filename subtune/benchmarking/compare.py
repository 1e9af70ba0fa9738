"""`--compare`: time the four deployments of a base and its tasks side by side (variants.py),
in one interleaved run per batch size, and put the cost model's prediction next to the
measured cost of the compiled graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from subtune.benchmarking.costmodel import CostPrediction, LayerCost, layer_costs, measure_bandwidth, predict
from subtune.benchmarking.harness import Protocol, Timing, time_interleaved
from subtune.machine import machine_info
from subtune.benchmarking.variants import RuntimeSpec, Variant, VariantBuilder, prepare_runtime, random_images
from subtune.errors import SubtuneError, VerificationError
from subtune.delta import TaskDelta
from subtune.models import BaseModel

KINDS = ("naive", "split", "compiled")
AGREEMENT_TOLERANCE = 1e-3  # relative to each output's scale; variants are the same math in another order


@dataclass
class VariantTiming:
    key: str
    kind: str
    label: str
    tasks: int
    batch: int
    sessions: int
    weight_bytes: int
    timing: Timing
    ratio_to_base: float
    added_ms: float  # median latency over the base's
    added_ms_per_task: float | None


@dataclass
class CompareResult:
    machine: dict
    runtime: dict
    protocol: Protocol
    input_size: tuple[int, int]
    tasks: list[dict]
    rows: list[VariantTiming]
    layers: list[LayerCost]
    predictions: list[CostPrediction]
    agreement: dict[str, float] = field(default_factory=dict)  # variant -> worst relative difference

    def row(self, key: str, batch: int) -> VariantTiming:
        return next(r for r in self.rows if r.key == key and r.batch == batch)


def run_compare(base: BaseModel, tasks: list[TaskDelta], *, batches: Sequence[int], protocol: Protocol,
                runtime: RuntimeSpec = RuntimeSpec(), task_counts: Sequence[int] | None = None,
                input_size: tuple[int, int] | None = None, threads: int | None = None,
                show_progress: bool = True, keep_samples: bool = False) -> CompareResult:
    """Variants (a)-(d) for the first k tasks, for each k in `task_counts` (default: all tasks).

    `threads`: ONNX Runtime's shared pool size, or torch's thread count (default: usable cores).
    For ONNX Runtime this must run before any other session is created in this process."""
    if not tasks:
        raise SubtuneError("--compare needs a base file and at least one task file")
    counts = sorted(set(task_counts or [len(tasks)]))
    if counts[0] < 1 or counts[-1] > len(tasks):
        raise SubtuneError(f"task counts {counts} must lie in 1..{len(tasks)} (the number of task files)")
    input_size = tuple(input_size or base.input_size)
    runtime = prepare_runtime(runtime, threads)

    from subtune.progress import StepProgress

    with StepProgress("building variants") as progress, \
            VariantBuilder(base, tasks, input_size=input_size, runtime=runtime, on_build=progress.step) as builder:
        variants = [builder.variant("base")]
        variants += [builder.variant(kind, tasks[:k]) for k in counts for kind in KINDS]
        agreement = check_agreement(variants, input_size)
        rows = []
        for batch in batches:
            images = random_images(batch, input_size)
            calls = {v.key: (lambda v=v: v.run(images)) for v in variants}
            timings = time_interleaved(calls, batch=batch, protocol=protocol,
                                       progress=f"batch {batch}" if show_progress else None, keep_samples=keep_samples)
            rows += _rows(variants, timings, batch)
        described = variants[0].describe()
        layers = layer_costs(builder.backbone, input_size)
    bandwidth = measure_bandwidth()
    predictions = [
        predict(layers, [(t.first, t.last) for t in tasks[:r.tasks]], batch=r.batch,
                base_ms=_base(rows, r.batch).timing.median_ms, measured_added_ms=r.added_ms, bandwidth=bandwidth)
        for r in rows if r.kind == "compiled"
    ]
    return CompareResult(machine_info(runtime.threads), described, protocol, input_size,
                         [{"name": t.name, "blocks": [t.first, t.last]} for t in tasks], rows, layers, predictions,
                         agreement)


def check_agreement(variants: list[Variant], input_size: tuple[int, int]) -> dict[str, float]:
    """Run every variant once and check it computes what the plainest deployment (the base and
    one full model per task) computes: a variant that is fast because it is wrong must never be
    reported. Returns each variant's worst difference relative to the output's scale."""
    import numpy as np

    images = random_images(2, input_size)
    outputs = {v.key: _named_outputs(v.run(images)) for v in variants}
    reference = {name: out for v in variants if v.kind in ("base", "naive") for name, out in outputs[v.key].items()}
    worst = {}
    for key, named in outputs.items():
        worst[key] = max(float(np.abs(got - reference[name]).max() / max(np.abs(reference[name]).max(), 1e-12))
                         for name, got in named.items())
        if worst[key] > AGREEMENT_TOLERANCE:
            raise VerificationError(f"variant {key} differs from the naive deployment by {worst[key]:.1e} (relative, "
                                    f"tolerance {AGREEMENT_TOLERANCE:.0e}); this is a subtune bug, please report it")
    return worst


def _named_outputs(values: dict) -> dict:
    """A variant's model outputs, without its input and the split variant's intermediate."""
    return {k: v for k, v in values.items() if k not in ("images", "shared")}


def _base(rows: list[VariantTiming], batch: int) -> VariantTiming:
    return next(r for r in rows if r.kind == "base" and r.batch == batch)


def _rows(variants: list[Variant], timings: dict[str, Timing], batch: int) -> list[VariantTiming]:
    base_ms = timings["base"].median_ms
    rows = []
    for v in variants:
        t = timings[v.key]
        added = t.median_ms - base_ms
        rows.append(VariantTiming(v.key, v.kind, v.label, v.tasks, batch, v.sessions, v.weight_bytes, t,
                                  t.median_ms / base_ms, added, added / v.tasks if v.tasks else None))
    return rows
