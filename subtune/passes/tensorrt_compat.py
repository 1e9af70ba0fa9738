"""Check an ONNX graph against what the TensorRT 10/11 ONNX parser documents it accepts
(onnx-tensorrt's docs/operators.md), without TensorRT: TensorRT cannot be installed on the
CPU machines this runs on, but the graph can be checked everywhere.

An analysis pass: it changes nothing. Rules:
  1. The default-domain opset is within TensorRT 10's range, 9..20.
  2. Every node's op type is one the parser supports (SUPPORTED_OPS; unknown domains fail).
  3. Axis-like inputs (Slice `axes`, Split `split`, Squeeze/Unsqueeze `axes`, Reduce* `axes`)
     are constants, as the parser needs them at build time.
  4. No batch size is baked in: a Reshape of a batch-dynamic tensor to a constant shape must
     keep the batch dynamic (a 0 or -1 in that shape).
  5. The graph input `images` has a dynamic batch dimension, so one engine profile serves
     every batch size.
  QDQ placement (explicit quantisation, the INT8 graphs of subtune/quantization):
  6. QuantizeLinear/DequantizeLinear scales and zero points are constants; scales are positive
     and finite, zero points all 0 (TensorRT quantises symmetrically).
  7. The quantised type is one TensorRT has (INT8, FP8, INT4): not UINT8, and no int32
     DequantizeLinear (quantised biases), which TensorRT's DequantizeLinear does not take.
  8. A scale with more than one element (per-channel) belongs to a constant weight, on the axis
     of its consumer's output channels (Conv 0, ConvTranspose 1, Gemm 0 with transB else 1,
     MatMul the last); activations are quantised per tensor.
Findings go into `self.findings`; with `raise_on_error` the first run that finds any raises
TensorRTCompatError listing them all.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

from subtune.errors import SubtuneError

OPSET_RANGE = (9, 20)

SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GroupNormalization HardSigmoid HardSwish Identity If InstanceNormalization
IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization
LpPool MatMul Max MaxPool Mean Min Mish Mod Mul Neg NonZero Not OneHot Or Pad ParametricSoftplus
Pow PRelu QuantizeLinear Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RoiAlign Round ScaledTanh Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub
Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Where Xor
""".split())

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QUANTISED_TYPES = (ir.DataType.INT8, ir.DataType.FLOAT8E4M3FN, ir.DataType.INT4)  # rule 7

# op type -> input positions that must be constants (rule 3)
CONSTANT_INPUTS = {
    "Slice": (3,), "Split": (1,), "Squeeze": (1,), "Unsqueeze": (1,),
    **{op: (1,) for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                           "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")},
}


class TensorRTCompatError(SubtuneError):
    pass


def _constant(value: ir.Value | None):
    """The value's constant tensor as numpy, or None when it is computed at run time."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().numpy()
    return None


def _batch_is_dynamic(value: ir.Value | None) -> bool:
    shape = value.shape if value is not None else None
    return shape is not None and len(shape) > 0 and not isinstance(shape[0], int)


class CheckTensorRTCompatPass(InPlacePass):
    def __init__(self, raise_on_error: bool = True):
        super().__init__()
        self.raise_on_error = raise_on_error
        self.findings: list[str] = []

    def call(self, model: ir.Model) -> PassResult:
        self.findings = findings = []
        opset = model.opset_imports.get("", None)
        if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:  # rule 1
            findings.append(f"opset {opset} is outside TensorRT 10's supported range {OPSET_RANGE[0]}..{OPSET_RANGE[1]}")
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            where = f"node {node.name or '?'} ({node.op_type})"
            if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:  # rule 2
                findings.append(f"{where}: operator {node.domain or 'ai.onnx'}::{node.op_type} is not supported by the TensorRT ONNX parser")
                continue
            for pos in CONSTANT_INPUTS.get(node.op_type, ()):  # rule 3
                if pos < len(node.inputs) and node.inputs[pos] is not None and _constant(node.inputs[pos]) is None:
                    findings.append(f"{where}: input {pos} (axes/sizes) is computed at run time; TensorRT needs a constant")
            if node.op_type in QDQ_OPS:  # rules 6-8
                findings.extend(f"{where}: {f}" for f in _qdq_findings(node))
            if node.op_type == "Reshape" and _batch_is_dynamic(node.inputs[0]):  # rule 4
                target = _constant(node.inputs[1])
                if target is not None and target.size and target[0] != 0 and -1 not in target.tolist():
                    findings.append(f"{where}: reshapes a batch-dynamic tensor to the constant shape {target.tolist()}, "
                                    "baking in one batch size")
        images = next((v for v in model.graph.inputs if v.name == "images"), None)
        if images is None or not _batch_is_dynamic(images):  # rule 5
            findings.append("graph input 'images' is missing or has a fixed batch dimension")
        if findings and self.raise_on_error:
            more = f" (and {len(findings) - 3} more)" if len(findings) > 3 else ""
            raise TensorRTCompatError("graph is not TensorRT-compatible: " + "; ".join(findings[:3]) + more)
        return PassResult(model, modified=False)


def _qdq_findings(node: ir.Node) -> list[str]:
    data = node.inputs[0]
    scale = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    if scale is None or (zero is not None and _constant(zero) is None):  # rule 6
        return ["scale and zero point must be constants (initializers)"]
    found = []
    if not (scale > 0).all() or not np.isfinite(scale).all():
        found.append("scales must be positive and finite")
    if zero is not None and _constant(zero).astype("float64").any():
        found.append("zero point must be 0: TensorRT quantises symmetrically")
    quantised = (zero.dtype if zero is not None else ir.DataType.UINT8) if node.op_type == "QuantizeLinear" else (
        data.dtype if data is not None and data.dtype is not None else zero.dtype if zero is not None else None)
    if quantised is not None and quantised not in QUANTISED_TYPES:  # rule 7
        found.append(f"quantises to {quantised.name}; TensorRT takes INT8 (or FP8/INT4), never UINT8 or INT32 "
                     "(keep biases float)")
    if scale.size > 1:  # rule 8
        found.extend(_per_channel_findings(node, data))
    return found


def _per_channel_findings(node: ir.Node, data: ir.Value | None) -> list[str]:
    weight = _constant(data)
    if node.op_type != "DequantizeLinear" or weight is None:
        return ["per-channel scales on an activation: TensorRT quantises activations per tensor"]
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 1
    axis %= weight.ndim
    found = []
    for consumer in node.outputs[0].consumers():
        if len(consumer.inputs) > 1 and consumer.inputs[1] is node.outputs[0]:
            expected = _output_channel_axis(consumer, weight.ndim)
            if expected is not None and axis != expected:
                found.append(f"per-channel weight scales on axis {axis}; {consumer.op_type} {consumer.name or '?'} "
                             f"has its output channels on axis {expected}")
    return found


def _output_channel_axis(node: ir.Node, rank: int) -> int | None:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if "transB" in node.attributes and node.attributes["transB"].as_int() else 1
    if node.op_type == "MatMul":
        return rank - 1
    return None
