"""Units of a QDQ graph, and the surgery that computes some of them in fp32.

A *unit* is a node of the QDQ graph that computes (Conv, Gemm, MatMul, Add, Mul, ...) and reads
at least one DequantizeLinear output. Falling a unit back (`fall_back`) makes it compute in fp32:
each of its DequantizeLinear inputs is replaced by the float tensor behind it, the float weight
for a quantised weight and the QuantizeLinear's input for an activation. What it writes is still
quantised for the units after it that stay in int8, so a fallback removes exactly the error that
unit's own quantisation adds. Q/DQ pairs left without readers go. Data movement (Reshape, Concat,
Slice, ...) and activations (Relu, Clip) are not units.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from subtune.quantization.base_stream import base_path

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


def dq_source(value: ir.Value | None) -> ir.Node | None:
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
        if node.op_type in NOT_UNITS or not any(dq_source(v) for v in node.inputs):
            continue
        weights = [dq.inputs[0].name.removesuffix(QUANTISED_SUFFIX) for v in node.inputs
                   if (dq := dq_source(v)) is not None and dq.inputs[0].is_initializer()]
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
            dq = dq_source(value)
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
