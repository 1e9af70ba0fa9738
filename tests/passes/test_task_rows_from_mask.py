"""TaskRowsFromMaskPass on a small hand-built graph: two index inputs that gather rows of `images`."""

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx_ir.passes import PreconditionError

from subtune.passes import TaskRowsFromMaskPass
from subtune.passes.record_stream_roles import stream_role


def _graph(rows_type=TensorProto.INT64, extra_inputs=()):
    """images [batch, 4]; out_i = images gathered at rows_i (as a fork gathers the rows that asked)."""
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["s0", 4]),
              helper.make_tensor_value_info("rows_0", rows_type, ["n0"]),
              helper.make_tensor_value_info("rows_1", rows_type, ["n1"]), *extra_inputs]
    nodes = [helper.make_node("Gather", ["images", f"rows_{i}"], [f"out_{i}"], axis=0, name=f"fork_{i}")
             for i in range(2)]
    outputs = [helper.make_tensor_value_info(f"out_{i}", TensorProto.FLOAT, [f"n{i}", 4]) for i in range(2)]
    proto = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 20)])
    return ir.serde.deserialize_model(proto)


def _pass():
    return TaskRowsFromMaskPass(["rows_0", "rows_1"], ["dogs", "cats"], ["rows:dogs", "rows:cats"])


def _run(model, images, mask):
    import onnxruntime as ort

    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images, "tasks": mask})


def test_index_inputs_become_the_mask_columns_nonzero_rows():
    model = _graph()
    result = _pass()(model)
    assert result.modified
    graph = result.model.graph
    assert [v.name for v in graph.inputs] == ["images", "tasks"]  # rules 1, 2
    mask = graph.inputs[1]
    assert mask.dtype == ir.DataType.BOOL and mask.shape[1] == 2
    assert mask.shape[0] == graph.inputs[0].shape[0] == ir.SymbolicDim("s0")  # the images' batch symbol
    for i, task in enumerate(["dogs", "cats"]):  # rule 3
        squeeze = graph.node(f"fork_{i}").inputs[1].producer()
        nonzero = squeeze.inputs[0].producer()
        gather = nonzero.inputs[0].producer()
        assert (squeeze.op_type, nonzero.op_type, gather.op_type) == ("Squeeze", "NonZero", "Gather")
        assert gather.inputs[0] is mask and gather.attributes["axis"].as_int() == 1
        assert gather.inputs[1].const_value.numpy().item() == i
        assert [stream_role(n) for n in (gather, nonzero, squeeze)] == [f"rows:{task}"] * 3
        assert gather.name == f"task_rows/{task}/Gather"
    images = np.arange(20, dtype=np.float32).reshape(5, 4)
    for m in ([[1, 0], [0, 0], [1, 1], [0, 1], [1, 0]], [[0, 0]] * 5, [[1, 1]] * 5):
        m = np.array(m, dtype=bool)
        out0, out1 = _run(result.model, images, m)
        np.testing.assert_array_equal(out0, images[m[:, 0]])  # rows in increasing order, none too
        np.testing.assert_array_equal(out1, images[m[:, 1]])


def test_no_index_inputs_is_a_no_op_with_a_reason():
    model = _graph()
    before = ir.to_proto(model).SerializeToString()
    p = TaskRowsFromMaskPass([], [], [])
    assert not p(model).modified
    assert p.reason == "no index inputs: not a task-select graph"
    assert ir.to_proto(model).SerializeToString() == before


@pytest.mark.parametrize("make,why", [
    (lambda: _graph(TensorProto.FLOAT), "index input 'rows_0' is FLOAT .* expected int64 of rank 1"),
    (lambda: _graph(extra_inputs=[helper.make_tensor_value_info("tasks", TensorProto.BOOL, ["s0", 2])]),
     "already has an input named 'tasks'"),
])
def test_bad_graphs_are_refused_before_any_change(make, why):
    model = make()
    before = ir.to_proto(model).SerializeToString()
    with pytest.raises(PreconditionError, match=why):
        _pass()(model)
    assert ir.to_proto(model).SerializeToString() == before


def test_a_missing_index_input_is_refused():
    with pytest.raises(PreconditionError, match="no index input 'rows_9'"):
        TaskRowsFromMaskPass(["rows_0", "rows_9"], ["a", "b"], ["rows:a", "rows:b"])(_graph())
