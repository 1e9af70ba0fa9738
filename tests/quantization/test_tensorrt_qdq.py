"""The TensorRT check's QDQ placement rules (6-8 in subtune/passes/tensorrt_compat.py), on
hand-built graphs: images -> Q -> DQ -> Conv(DQ(int8 weight)) -> out."""

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from subtune.passes import CheckTensorRTCompatPass


def _graph(*, act_zp=0, act_type=np.int8, w_axis=0, w_scales=4, act_scales=1, bias_int32=False, scale_input=False):
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 4, 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    shape = () if act_scales == 1 else (act_scales,)
    inits = [numpy_helper.from_array(np.full(shape, 0.1, np.float32), "xs"),
             numpy_helper.from_array(np.full(shape, act_zp, act_type), "xz"),
             numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "w"),
             numpy_helper.from_array(np.full(w_scales, 0.05, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(w_scales, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["images", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=w_axis)]
    conv_inputs = ["xd", "wd"]
    if bias_int32:
        inits += [numpy_helper.from_array(np.zeros(4, np.int32), "b"), numpy_helper.from_array(np.float32(0.005), "bs")]
        nodes.append(helper.make_node("DequantizeLinear", ["b", "bs"], ["bd"]))
        conv_inputs.append("bd")
    nodes.append(helper.make_node("Conv", conv_inputs, ["out"], name="conv"))
    inputs = [x]
    if scale_input:  # the activation scale fed at run time
        inits = [i for i in inits if i.name != "xs"]
        inputs.append(helper.make_tensor_value_info("xs", TensorProto.FLOAT, []))
    g = helper.make_graph(nodes, "g", inputs, [y], initializer=inits)
    return ir.serde.deserialize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]))


def _findings(model):
    p = CheckTensorRTCompatPass(raise_on_error=False)
    assert p(model).modified is False
    return p.findings


def test_symmetric_int8_per_channel_weights_pass():
    assert _findings(_graph()) == []


@pytest.mark.parametrize("graph, message", [
    (dict(scale_input=True), "must be constants"),  # rule 6
    (dict(act_zp=3), "zero point must be 0"),  # rule 6
    (dict(act_type=np.uint8), "quantises to UINT8"),  # rule 7
    (dict(bias_int32=True), "quantises to INT32"),  # rule 7
    (dict(act_scales=3), "per-channel scales on an activation"),  # rule 8
    (dict(w_axis=1, w_scales=3), "on axis 1; Conv conv has its output channels on axis 0"),  # rule 8
])
def test_qdq_placement_tensorrt_refuses(graph, message):
    findings = _findings(_graph(**graph))
    assert any(message in f for f in findings), findings


def test_graph_without_qdq_nodes_has_no_findings():
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["images"], ["out"])], "g",
                                            [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3])],
                                            [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]),
                          opset_imports=[helper.make_opsetid("", 20)])
    assert _findings(ir.serde.deserialize_model(m)) == []
