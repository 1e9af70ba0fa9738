"""Accuracy-aware mixed precision: layer sensitivity, and the fewest layers kept in fp32 that meet
every output's target.

A *unit* is a node of the QDQ graph that computes (Conv, Gemm, MatMul, Add, Mul, ...) and reads
at least one DequantizeLinear output. Falling a unit back (`fall_back`) makes it compute in fp32:
each of its DequantizeLinear inputs is replaced by the float tensor behind it, the float weight
for a quantised weight and the QuantizeLinear's input for an activation. What it writes is still
quantised for the units after it that stay in int8, so a fallback removes exactly the error that
unit's own quantisation adds. Q/DQ pairs left without readers go.

Sensitivity of a unit: the graph with only that unit quantised (every other node fallen back),
against fp32 on the first `sensitivity_images` check images: the relative logit error of each
output (compare.py). Data movement (Reshape, Concat, Slice, ...) and activations (Relu, Clip)
are not units; they keep their Q/DQ in mixed graphs and lose them in the one-unit graphs.

Greedy (`choose_fallback`): while an output misses its target on the check images, fall back the
units that add most error to the failing outputs (sensitivity divided by that output's error in
the all-int8 graph, summed over the failing outputs), 1, 1, 2, 2, 4, 4, ... at a time, up to
`max_fallback` units; units that do not touch a failing output are never chosen.

Pinning survives (int8.py): the base-only graph falls back the same nodes (those it has), so
each base-path tensor is still quantised with the same scale in both graphs or in neither, and a
fallen-back shared node computes the base rows in fp32 in both. tests/quantization checks the
base output with tasks against the base-only graph's, bit for bit, for mixed graphs too.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from subtune.quantization.base_stream import base_path
from subtune.quantization.compare import OutputAgreement, compare_output, run_batches

log = logging.getLogger(__name__)

NOT_UNITS = {"QuantizeLinear", "DequantizeLinear", "Reshape", "Gather", "Squeeze", "Unsqueeze", "Slice", "Transpose",
             "Flatten", "Concat", "Split", "Identity", "Expand", "Relu", "Clip", "MaxPool"}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QUANTISED_SUFFIX = "_quantized"  # ONNX Runtime's name for a weight's int8 initializer


@dataclass
class Unit:
    node: str
    op_type: str
    label: str  # the weight it reads (readable: base.blocks.5.0.conv_dw.weight), else the node name
    base_path: bool  # the base output depends on it

    def to_json(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "label": self.label, "base_path": self.base_path}


def _dq_source(value: ir.Value | None) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == "DequantizeLinear" else None


def quantised_units(model: ir.Model) -> list[Unit]:
    """The units of a QDQ graph, in graph order."""
    try:
        on_base = base_path(model)
    except ValueError:
        on_base = set()
    units = []
    for node in model.graph:
        if node.op_type in NOT_UNITS or not any(_dq_source(v) for v in node.inputs):
            continue
        weights = [dq.inputs[0].name.removesuffix(QUANTISED_SUFFIX) for v in node.inputs
                   if (dq := _dq_source(v)) is not None and dq.inputs[0].is_initializer()]
        units.append(Unit(node.name, node.op_type, weights[0] if weights else node.name,
                          any(o.name in on_base for o in node.outputs)))
    return units


def float_weights(fp32: ir.Model) -> dict[str, ir.TensorProtocol]:
    return {name: v.const_value for name, v in fp32.graph.initializers.items() if v.const_value is not None}


def fall_back(model: ir.Model, weights: dict[str, ir.TensorProtocol], nodes: set[str],
              protected: set[str] | frozenset = frozenset()) -> ir.Model:
    """A copy of the QDQ `model` where the nodes named `nodes` compute in fp32 (module docstring).

    An input that is a data-movement or activation node's output (a merge's Concat, a Clip) is
    followed back: that node reads float too, so the fallen-back node sees no quantisation of its
    input at all, and a shared layer after a merge reads the base rows as the base-only graph's
    copy of it does (which has no merge): the pinning property holds by construction.

    `protected`: names of base-path values (base_stream.base_path). A node off the base path (a
    task's layer) keeps reading a protected value through its Q/DQ pair (only its weights go
    float): otherwise the base tensor would gain a float reader in the multi-task graph only, and
    ONNX Runtime's fused uint8 kernels would then round the base rows differently there."""
    out = model.clone()
    graph = out.graph
    by_name = {n.name: n for n in graph}
    stack = [by_name[name] for name in nodes if name in by_name]
    done: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in done:
            continue
        done.add(id(node))
        for i, value in enumerate(node.inputs):
            dq = _dq_source(value)
            if dq is None:
                continue
            source = dq.inputs[0]
            if source.is_initializer() or source.const_value is not None:
                name = source.name.removesuffix(QUANTISED_SUFFIX)
                if name not in weights:
                    continue  # a constant quantised as it was written: nothing float behind it
                if name not in graph.initializers:
                    tensor = weights[name]
                    graph.register_initializer(ir.Value(name=name, shape=ir.Shape(tensor.shape),
                                                        type=ir.TensorType(tensor.dtype), const_value=tensor))
                node.replace_input_with(i, graph.initializers[name])
                continue
            q = source.producer()
            if q is None or q.op_type != "QuantizeLinear":
                continue  # an int8 graph input: nothing float behind it
            if q.inputs[0].name in protected and not any(o.name in protected for o in node.outputs):
                continue
            node.replace_input_with(i, q.inputs[0])
            behind = q.inputs[0].producer()
            if behind is not None and behind.op_type in NOT_UNITS and behind.op_type not in QDQ_OPS:
                stack.append(behind)
    RemoveUnusedNodesPass()(out)
    return out


def serialize(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


@dataclass
class Evaluator:
    """Runs candidate graphs on the check images against fp32 outputs computed once."""
    refs: list[np.ndarray]
    images: np.ndarray
    output_names: list[str]
    labels: dict[str, np.ndarray]
    emulate_qdq: bool
    runs: int = 0

    def rows(self, model: ir.Model, count: int | None = None) -> list[OutputAgreement]:
        self.runs += 1
        images = self.images if count is None else self.images[:count]
        gots = run_batches(serialize(model), images, self.output_names, emulate_qdq=self.emulate_qdq)
        return [compare_output(name, ref[:len(images)], got, None if count is not None else self.labels.get(name))
                for name, ref, got in zip(self.output_names, self.refs, gots)]


def sensitivity(model: ir.Model, weights, units: list[Unit], evaluator: Evaluator, images: int) -> list[dict]:
    """Each unit quantised alone: relative logit error per output on the first `images` check images."""
    from tqdm import tqdm

    every = {n.name for n in model.graph}
    rows = []
    for unit in tqdm(units, desc="layer sensitivity", unit="layer", file=sys.stderr, disable=not sys.stderr.isatty(),
                     leave=False):
        alone = fall_back(model, weights, every - {unit.node})
        errors = {r.output: r.relative_logit_error for r in evaluator.rows(alone, images)}
        rows.append({**unit.to_json(), "relative_logit_error": errors, "max_error": max(errors.values())})
    return rows


@dataclass
class FallbackResult:
    nodes: list[str]
    rows: list[OutputAgreement]
    passed: bool
    history: list[dict] = field(default_factory=list)


def choose_fallback(units: list[Unit], sens: list[dict], evaluate: Callable[[list[str]], list[OutputAgreement]],
                    passes: Callable[[OutputAgreement], bool], max_fallback: int) -> FallbackResult:
    """The greedy of the module docstring; `evaluate(nodes)` gives the rows with `nodes` in fp32."""
    chosen: list[str] = []
    rows = evaluate(chosen)
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
    """Sensitivity of every unit, then the greedy fallback (when `options.fallback`). Returns the
    multi-task graph, the base-only graph with the same fallbacks, and the report."""
    emulate = options.int8_target == "tensorrt"
    names = [v.name for v in fp32.graph.outputs]
    refs = run_batches(serialize(fp32), check.images, names)
    evaluator = Evaluator(refs, check.images, names, check.labels, emulate)
    weights = float_weights(fp32)
    units = quantised_units(quantised)
    report: dict = {"units": len(units), "check": check.to_json()}
    sens = sensitivity(quantised, weights, units, evaluator, min(options.sensitivity_images, len(check.images)))
    report["sensitivity"] = {"images": min(options.sensitivity_images, len(check.images)),
                             "metric": "relative logit error per output, the unit alone quantised",
                             "layers": sorted(sens, key=lambda s: -s["max_error"])}
    if not options.fallback:
        return quantised, base_only, report
    limit = len(units) // 2 if options.max_fallback is None else min(options.max_fallback, len(units))

    def passes(row: OutputAgreement) -> bool:
        return row.passes("int8", **options.limits)

    protected = base_path(quantised)
    result = choose_fallback(units, sens, lambda nodes: evaluator.rows(fall_back(quantised, weights, set(nodes),
                                                                                 protected)), passes, limit)
    chosen = set(result.nodes)
    labels = {u.node: u.label for u in units}
    report["fallback"] = {"max_fallback": limit, "passed": result.passed, "layers": len(result.nodes),
                          "nodes": result.nodes, "labels": [labels[n] for n in result.nodes],
                          "base_path_layers": sum(u.base_path for u in units if u.node in chosen),
                          "evaluations": evaluator.runs, "history": result.history}
    if not chosen:
        return quantised, base_only, report
    base_nodes = {n.name for n in base_only.graph} & chosen
    return (fall_back(quantised, weights, chosen, protected), fall_back(base_only, weights, base_nodes, protected),
            report)


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
