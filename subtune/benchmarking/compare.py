"""`--compare`: time the deployments of a base and its tasks side by side (variants.py): the four
of the paper's comparison, and on ONNX Runtime the task-select graph (e) under each request mix,
in one interleaved run per batch size; and put the cost model's prediction next to the measured
cost of the compiled graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from subtune.benchmarking.costmodel import CostPrediction, LayerCost, layer_costs, measure_bandwidth, predict
from subtune.benchmarking.harness import Protocol, Timing, time_interleaved
from subtune.machine import machine_info
from subtune.benchmarking.variants import (MIXES, RuntimeSpec, Variant, VariantBuilder, prepare_runtime,
                                           random_images)
from subtune.errors import SubtuneError, VerificationError
from subtune.delta import TaskDelta
from subtune.models import BaseModel

KINDS = ("naive", "split", "compiled", "selected")  # besides the base; selected: ONNX Runtime only
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
    mix: str | None = None  # selected (e) only: the request mix (variants.MIXES)


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
                show_progress: bool = True, keep_samples: bool = False, kinds: Sequence[str] | None = None,
                mixes: Sequence[str] = tuple(MIXES)) -> CompareResult:
    """Variants (a)-(e) for the first k tasks, for each k in `task_counts` (default: all tasks).

    `kinds`: which of naive, split, compiled, selected besides the base (default: all; selected
    on ONNX Runtime only), `mixes`: the request mixes the selected graph is timed under.
    `threads`: ONNX Runtime's shared pool size, or torch's thread count (default: usable cores).
    For ONNX Runtime this must run before any other session is created in this process."""
    if not tasks:
        raise SubtuneError("--compare needs a base file and at least one task file")
    counts = sorted(set(task_counts or [len(tasks)]))
    if counts[0] < 1 or counts[-1] > len(tasks):
        raise SubtuneError(f"task counts {counts} must lie in 1..{len(tasks)} (the number of task files)")
    input_size = tuple(input_size or base.input_size)
    if kinds is None:
        kinds = [k for k in KINDS if k != "selected" or runtime.name == "onnxruntime"]
    unknown = sorted(set(kinds) - set(KINDS)) + sorted(set(mixes) - set(MIXES))
    if unknown:
        raise SubtuneError(f"unknown variant kinds or request mixes {unknown}: expected kinds of {', '.join(KINDS)} "
                           f"and mixes of {', '.join(MIXES)}")
    runtime = prepare_runtime(runtime, threads)

    from subtune.progress import StepProgress

    with StepProgress("building variants") as progress, \
            VariantBuilder(base, tasks, input_size=input_size, runtime=runtime, on_build=progress.step) as builder:
        variants = [builder.variant("base")]
        for k in counts:
            for kind in kinds:
                if kind == "selected":
                    variants += [builder.variant(kind, tasks[:k], mix=mix) for mix in mixes]
                else:
                    variants.append(builder.variant(kind, tasks[:k]))
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
    """Run every variant once and check it computes what the plainest deployment timed (the base
    and one full model per task, else split sessions) computes, and that a task-select graph
    fills NaN exactly where its mix asks for nothing: a variant that is fast because it is wrong
    must never be reported. Returns each variant's worst difference relative to the output's scale."""
    import numpy as np

    images = random_images(2, input_size)
    outputs = {v.key: _named_outputs(v.run(images)) for v in variants}
    reference: dict = {}  # the base alone's output; each task's from the plainest deployment timed
    for kind in ("base", "naive", "split", "compiled"):
        for v in (v for v in variants if v.kind == kind):
            for name, out in outputs[v.key].items():
                reference.setdefault(name, out)
    worst = {}
    for v in variants:
        errors = []
        for i, (name, got) in enumerate(outputs[v.key].items()):
            ref = reference[name]
            rows = np.ones(len(got), dtype=bool) if v.mix is None or name == "base" else v.mask(len(got))[:, i - 1]
            if v.mix is not None and not np.array_equal(~np.isnan(got).all(axis=1), rows):
                raise VerificationError(f"variant {v.key}: output {name!r} is not NaN exactly in the rows that did "
                                        "not ask for it; this is a subtune bug, please report it")
            if rows.any():
                errors.append(float(np.abs(got[rows] - ref[rows]).max() / max(np.abs(ref).max(), 1e-12)))
        worst[v.key] = max(errors)
        if worst[v.key] > AGREEMENT_TOLERANCE:
            raise VerificationError(f"variant {v.key} differs from the plainest deployment by {worst[v.key]:.1e} "
                                    f"(relative, tolerance {AGREEMENT_TOLERANCE:.0e}); this is a subtune bug, please "
                                    "report it")
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
                                  t.median_ms / base_ms, added, added / v.tasks if v.tasks else None, v.mix))
    return rows
