"""Accuracy-aware mixed precision: the fewest layers kept in fp32 that meet every output's target.

Units and the fallback surgery are fallback.py's; layer sensitivity is sensitivity.py's.

The plain INT8 graph is judged first, on the check images against fp32 (the same runs verify
precision then reuses: compare.check_outputs). When every output meets its target, that is the
graph: no sensitivity is measured and no fallback searched (unless `options.sensitivity` asks
for the table). Otherwise the sensitivity of the units that reach a failing output is measured
on those outputs, and the greedy runs.

Greedy (`choose_fallback`): while an output misses its target on the check images, fall back the
units that add most error to the failing outputs (sensitivity divided by that output's error in
the all-int8 graph, summed over the failing outputs), 1, 1, 2, 2, 4, 4, ... at a time, up to
`max_fallback` units; units that do not touch a failing output are never chosen.

What the search cost (seconds, sessions, evaluations) goes into the report's `mixed.cost` and
the log.

Pinning survives (int8.py): the base-only graph falls back the same nodes (those it has), so
each base-path tensor is still quantised with the same scale in both graphs or in neither, and a
fallen-back shared node computes the base rows in fp32 in both. tests/quantization checks the
base output with tasks against the base-only graph's, bit for bit, for mixed graphs too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import onnx_ir as ir

from subtune.quantization.base_stream import base_path
from subtune.quantization.compare import OutputAgreement, agreement, check_outputs
from subtune.quantization.fallback import Unit, fall_back, float_weights, quantised_units
from subtune.quantization.files import runnable, too_large, weight_bytes
from subtune.quantization.sensitivity import (NotOneGraph, Sensitivity, sensitivity_one_graph,
                                              sensitivity_per_session)

log = logging.getLogger(__name__)


def layer_sensitivity(quantised: ir.Model, weights, units: list[Unit], refs, images, names: list[str],
                      outputs: list[str], *, emulate_qdq: bool) -> Sensitivity:
    """sensitivity.py's one graph, or one session per unit where the one graph cannot be built."""
    start = time.perf_counter()
    try:
        result = sensitivity_one_graph(quantised, weights, units, images, outputs, emulate_qdq=emulate_qdq)
    except NotOneGraph as e:
        log.warning("layer sensitivity: one session per layer (%d sessions), as the one-graph form does not apply: %s",
                    len(units), e)
        result = sensitivity_per_session(quantised, weights, units, refs, images, names, outputs,
                                         emulate_qdq=emulate_qdq)
        result.note = str(e)
    result.seconds = round(time.perf_counter() - start, 3)
    return result


@dataclass
class FallbackResult:
    nodes: list[str]
    rows: list[OutputAgreement]
    passed: bool
    history: list[dict] = field(default_factory=list)


def choose_fallback(units: list[Unit], sens: list[dict], plain: list[OutputAgreement],
                    evaluate: Callable[[list[str]], list[OutputAgreement]],
                    passes: Callable[[OutputAgreement], bool], max_fallback: int) -> FallbackResult:
    """The greedy of the module docstring, from the plain graph's rows (`plain`); `evaluate(nodes)`
    gives the rows with `nodes` in fp32."""
    chosen: list[str] = []
    rows = plain
    full = {r.output: max(r.relative_logit_error or 0.0, 1e-12) for r in rows}
    by_node = {s["node"]: s["relative_logit_error"] for s in sens}
    history = [{"fallback": 0, "failing": [r.output for r in rows if not passes(r)],
                "outputs": {r.output: _summary(r) for r in rows}}]
    steps = iter([1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32] + [64] * 1000)
    while history[-1]["failing"] and len(chosen) < max_fallback:
        failing = history[-1]["failing"]
        scored = sorted(((sum(by_node[u.node].get(o, 0.0) / full[o] for o in failing), i, u.node)
                         for i, u in enumerate(units) if u.node not in chosen), key=lambda t: (-t[0], t[1]))
        scored = [s for s in scored if s[0] > 0]
        if not scored:
            break
        take = min(next(steps), max_fallback - len(chosen), len(scored))
        chosen += [node for _, _, node in scored[:take]]
        rows = evaluate(chosen)
        history.append({"fallback": len(chosen), "failing": [r.output for r in rows if not passes(r)],
                        "outputs": {r.output: _summary(r) for r in rows}})
        log.info("int8 with %d layer(s) in fp32: failing %s", len(chosen), history[-1]["failing"] or "none")
    return FallbackResult(chosen, rows, not history[-1]["failing"], history)


def _summary(row: OutputAgreement) -> dict:
    return {"agreement": row.agreement, "confident_agreement": row.confident_agreement,
            "accuracy_drop": row.accuracy_drop, "relative_logit_error": row.relative_logit_error}


def mixed_int8(fp32: ir.Model, quantised: ir.Model, base_only: ir.Model, check, options) -> tuple[
        ir.Model, ir.Model, dict]:
    """The plain graph judged, then (when it fails, or `options.sensitivity` asks) the layer
    sensitivity, then (when it fails and `options.fallback`) the greedy. Returns the multi-task
    graph, the base-only graph with the same fallbacks, and the report."""
    clock = time.perf_counter
    emulate = options.int8_target == "tensorrt"
    names = [v.name for v in fp32.graph.outputs]
    cost: dict = {}
    start = clock()
    with runnable(fp32) as source:
        refs, _ = check_outputs(check, source, names)  # verify precision reuses these
    cost["fp32_reference_seconds"] = round(clock() - start, 3)
    evaluations = 0
    previous: set = set()

    def evaluate(model: ir.Model) -> list[OutputAgreement]:
        nonlocal evaluations, previous
        evaluations += 1
        for key in previous:  # only the last graph evaluated can be the one verify precision checks
            check.outputs.pop(key, None)
        before = set(check.outputs)
        with runnable(model) as source:
            gots, _ = check_outputs(check, source, names, emulate_qdq=emulate)
        previous = set(check.outputs) - before
        return agreement(refs, gots, names, check.labels)

    def passes(row: OutputAgreement) -> bool:
        return row.passes("int8", **options.limits)

    start = clock()
    plain = evaluate(quantised)
    cost["plain_check_seconds"] = round(clock() - start, 3)
    failing = [r.output for r in plain if not passes(r)]
    units = quantised_units(quantised)
    report: dict = {"units": len(units), "check": check.to_json(),
                    "plain": {"failing": failing, "outputs": {r.output: _summary(r) for r in plain}}}
    search = bool(failing) and options.fallback
    if search and too_large(fp32):
        refuse_search_over_2gib(fp32, units, plain, failing, options)
    if not search and (not options.sensitivity or too_large(fp32)):
        why = ("plain int8 meets every target on the check images" if not failing
               else "--max-fallback 0: no fallback searched")
        if options.sensitivity:
            why += "; not measured on a graph over 2 GiB (it would copy the whole graph per layer)"
        report["sensitivity"] = {"skipped": why}
        if options.fallback:
            report["fallback"] = _none_needed(units, options, report["plain"], evaluations)
        report["cost"] = {**cost, "search_seconds": 0.0, "sessions": 0, "evaluations": evaluations}
        log.info("%s (%d outputs, %d check images, %.1f s): no layer sensitivity or fallback search", why.capitalize(),
                 len(names), len(check.images), cost["plain_check_seconds"])
        return quantised, base_only, report

    weights = float_weights(fp32)
    count = min(options.sensitivity_images, len(check.images))
    # every output, not only the failing ones: a fallback can tip another output over its target
    sens = layer_sensitivity(quantised, weights, units, refs, check.images[:count], names, names,
                             emulate_qdq=emulate)
    report["sensitivity"] = {"images": count, "method": sens.method, "sessions": sens.sessions,
                             "seconds": sens.seconds, **sens.extra, **({"note": sens.note} if sens.note else {}),
                             "metric": "relative logit error per output, the unit alone quantised",
                             "layers": sorted(sens.rows, key=lambda s: -s["max_error"])}
    cost.update(sensitivity_seconds=sens.seconds, sessions=sens.sessions)
    if not options.fallback or not failing:
        if options.fallback:
            report["fallback"] = _none_needed(units, options, report["plain"], evaluations)
        report["cost"] = {**cost, "search_seconds": sens.seconds, "evaluations": evaluations}
        return quantised, base_only, report

    limit = _limit(units, options)
    protected = base_path(quantised)
    start = clock()
    result = choose_fallback(units, sens.rows, plain, lambda nodes: evaluate(fall_back(quantised, weights, set(nodes),
                                                                                        protected)), passes, limit)
    cost["greedy_seconds"] = round(clock() - start, 3)
    cost["search_seconds"] = round(sens.seconds + cost["greedy_seconds"], 3)
    cost["evaluations"] = evaluations
    chosen = set(result.nodes)
    labels = {u.node: u.label for u in units}
    report["fallback"] = {"max_fallback": limit, "passed": result.passed, "layers": len(result.nodes),
                          "nodes": result.nodes, "labels": [labels[n] for n in result.nodes],
                          "base_path_layers": sum(u.base_path for u in units if u.node in chosen),
                          "evaluations": evaluations, "history": result.history}
    report["cost"] = cost
    log.info("fallback search: %d layer(s) in fp32 (targets %s) in %.1f s: sensitivity of %d layers (%d images, "
             "%d session(s), %s) %.1f s, %d evaluation(s) on %d check images %.1f s", len(result.nodes),
             "met" if result.passed else "NOT met", cost["search_seconds"], len(units), count,
             sens.sessions, sens.method, sens.seconds, evaluations - 1, len(check.images), cost["greedy_seconds"])
    if not chosen:
        return quantised, base_only, report
    base_nodes = {n.name for n in base_only.graph} & chosen
    return (fall_back(quantised, weights, chosen, protected), fall_back(base_only, weights, base_nodes, protected),
            report)


def refuse_search_over_2gib(fp32: ir.Model, units: list[Unit], plain: list[OutputAgreement], failing: list[str],
                            options) -> None:
    """Why a graph over 2 GiB gets plain INT8 or nothing: the search would run its one-unit graphs
    (or sensitivity.py's one graph, which holds the fp32 graph and copies of it) and its candidate
    graphs on the check images, each as large as the graph itself."""
    from subtune.errors import VerificationError
    from subtune.quantization.compare import check_thresholds

    gib = weight_bytes(fp32) / 2**30
    why = ""
    try:
        check_thresholds([r for r in plain if r.output in failing], "int8", **options.limits)
    except VerificationError as e:
        why = str(e).split("; keep more layers")[0]
    raise VerificationError(
        f"plain int8 misses its target ({why}), and the fallback search that would keep layers in fp32 is not run on "
        f"a graph over 2 GiB ({gib:.2f} GiB of fp32 weights, {len(units)} quantised layers): measuring each layer's "
        f"sensitivity runs about {len(units) // 2} copies of the whole graph on {options.sensitivity_images} images, "
        "and each fallback step the whole graph on every check image (hours here, and several copies of the weights "
        "in memory); compile fewer tasks per graph (the search then runs per graph), or use --precision fp16")


def _none_needed(units: list[Unit], options, plain: dict, evaluations: int) -> dict:
    """The fallback report when the plain graph meets every target."""
    return {"max_fallback": _limit(units, options), "passed": True, "layers": 0, "nodes": [], "labels": [],
            "base_path_layers": 0, "evaluations": evaluations,
            "history": [{"fallback": 0, "failing": [], "outputs": plain["outputs"]}]}


def _limit(units: list[Unit], options) -> int:
    return len(units) // 2 if options.max_fallback is None else min(options.max_fallback, len(units))


def fall_back_layers(fp32: ir.Model, quantised: ir.Model, base_only: ir.Model, labels: list[str]) -> tuple[
        ir.Model, ir.Model, list[str]]:
    """The fallbacks of one graph applied to another compile of the same base and tasks (another
    input size, say): units matched by label (their weight's name). Returns both graphs and the
    labels that matched."""
    weights = float_weights(fp32)
    wanted = set(labels)
    nodes = {u.node for u in quantised_units(quantised) if u.label in wanted}
    matched = sorted(u.label for u in quantised_units(quantised) if u.node in nodes)
    base_nodes = {n.name for n in base_only.graph} & nodes
    protected = base_path(quantised)
    return (fall_back(quantised, weights, nodes, protected), fall_back(base_only, weights, base_nodes, protected),
            matched)
