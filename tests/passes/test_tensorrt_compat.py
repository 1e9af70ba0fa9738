"""The static TensorRT check on hand-built graphs: one case per rule, plus a clean graph."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from subtune.passes import CheckTensorRTCompatPass, TensorRTCompatError


def _model(nodes, inits=(), opset=20, batch="batch", extra_inputs=()):
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 4, 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", [x, *extra_inputs], [y], initializer=list(inits))
    return ir.serde.deserialize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]))


def _const(name, values):
    return onnx.numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _check(model):
    p = CheckTensorRTCompatPass(raise_on_error=False)
    result = p(model)
    assert result.modified is False  # an analysis pass
    return p.findings


def test_clean_graph_has_no_findings():
    m = _model([helper.make_node("Reshape", ["images", "shape"], ["out"])], [_const("shape", [-1, 48])])
    assert _check(m) == []


def test_rule1_opset_out_of_range():
    assert any("opset 21" in f for f in _check(_model([helper.make_node("Relu", ["images"], ["out"])], opset=21)))


def test_rule2_unsupported_operator():
    m = _model([helper.make_node("Unique", ["images"], ["out"])])
    assert any("Unique" in f for f in _check(m))


def test_rule3_runtime_axes():
    axes_in = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    m = _model([helper.make_node("Squeeze", ["images", "axes"], ["out"])], extra_inputs=[axes_in])
    assert any("computed at run time" in f for f in _check(m))


def test_rule4_baked_batch_size():
    m = _model([helper.make_node("Reshape", ["images", "shape"], ["out"])], [_const("shape", [2, 48])])
    assert any("baking in one batch size" in f for f in _check(m))


def test_rule5_fixed_batch_input():
    m = _model([helper.make_node("Relu", ["images"], ["out"])], batch=2)
    assert any("fixed batch" in f for f in _check(m))


def test_raises_with_all_findings_in_one_line():
    m = _model([helper.make_node("Unique", ["images"], ["out"])], opset=21, batch=2)
    with pytest.raises(TensorRTCompatError) as e:
        CheckTensorRTCompatPass()(m)
    assert "\n" not in str(e.value) and "opset 21" in str(e.value)
