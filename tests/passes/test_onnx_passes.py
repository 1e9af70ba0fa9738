"""Naming, metadata and stripping passes on small hand-built graphs."""

import json

import onnx_ir as ir
from onnx import TensorProto, helper

from subtune.passes import AttachMetadataPass, NameStreamNodesPass, StripExportMetadataPass
from subtune.passes.name_stream_nodes import SCOPE_KEY


def _graph_with_scopes(scopes):
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4])
    nodes, prev = [], "images"
    for i, _ in enumerate(scopes):
        nodes.append(helper.make_node("Relu", [prev], [f"v{i}"], name=f"node_{i}"))
        prev = f"v{i}"
    y = helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", 4])
    model = ir.serde.deserialize_model(helper.make_model(helper.make_graph(nodes, "g", [x], [y])))
    for node, scope in zip(model.graph, scopes):
        if scope is not None:
            node.metadata_props[SCOPE_KEY] = json.dumps(["", *scope])
        node.metadata_props["pkg.torch.onnx.stack_trace"] = "/home/someone/file.py:1"
    return model


def test_stream_nodes_get_module_names():
    m = _graph_with_scopes([["merges.merge_after_block3", "cat"], ["split_heads", "a"], ["split_heads", "b"],
                            ["forks.fork_dogs_before_block2", "view"], ["base.layer1", "relu"]])
    result = NameStreamNodesPass({})(m)
    assert result.modified
    assert [n.name for n in m.graph] == ["merge_after_block3/Relu", "split_heads/Relu_0", "split_heads/Relu_1",
                                         "fork_dogs_before_block2/Relu", "node_4"]


def test_naming_is_a_no_op_without_stream_scopes():
    m = _graph_with_scopes([["base.layer1"], None])
    assert not NameStreamNodesPass({}).call(m).modified
    assert [n.name for n in m.graph] == ["node_0", "node_1"]


def test_strip_removes_paths_then_is_a_no_op():
    m = _graph_with_scopes([["base"], ["base"]])
    assert StripExportMetadataPass()(m).modified
    assert all(not n.metadata_props for n in m.graph)
    assert not StripExportMetadataPass()(m).modified


def test_metadata_is_canonical_json_and_idempotent():
    m = _graph_with_scopes([None])
    p = AttachMetadataPass({"subtune.tasks": [{"b": 1, "a": 2}], "subtune.version": "x"})
    assert p(m).modified
    assert m.metadata_props["subtune.tasks"] == '[{"a": 2, "b": 1}]'
    assert not p(m).modified


def _batched_graph(dim="s34"):
    """images[dim, 4] -> Relu -> Concat with itself on axis 0 -> out[2*dim, 4]."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [dim, 4])
    nodes = [helper.make_node("Relu", ["images"], ["r"], name="relu"),
             helper.make_node("Concat", ["r", "r"], ["out"], name="cat", axis=0)]
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [f"2*{dim}" if isinstance(dim, str) else 2 * dim, 4])
    mid = helper.make_tensor_value_info("r", TensorProto.FLOAT, [dim, 4])
    graph = helper.make_graph(nodes, "g", [x], [y], value_info=[mid])
    return ir.serde.deserialize_model(helper.make_model(graph))


def test_batch_dimension_is_named_batch_everywhere():
    from subtune.passes import NameBatchDimPass

    m = _batched_graph("s34")  # the symbol the exporter chose
    result = NameBatchDimPass()(m)
    assert result.modified
    shapes = {v.name: [str(d) for d in v.shape] for v in [*m.graph.inputs, *m.graph.outputs, m.graph.node(0).outputs[0]]}
    assert shapes == {"images": ["batch", "4"], "out": ["2*batch", "4"], "r": ["batch", "4"]}


def test_batch_naming_is_a_no_op_when_named_and_leaves_other_symbols():
    from subtune.passes import NameBatchDimPass

    m = _batched_graph("batch")
    p = NameBatchDimPass()
    assert not p(m).modified and "already named" in p.reason
    m = _batched_graph("s3")
    m.graph.outputs[0].shape = ir.Shape(["s34", 4])  # another symbol that merely starts the same
    NameBatchDimPass()(m)
    assert str(m.graph.outputs[0].shape[0]) == "s34" and str(m.graph.inputs[0].shape[0]) == "batch"


def test_batch_naming_of_a_fixed_batch_says_why_not():
    from subtune.passes import NameBatchDimPass

    m = _batched_graph(3)
    p = NameBatchDimPass()
    assert not p(m).modified and "no symbolic first dimension" in p.reason
    assert m.graph.inputs[0].shape[0] == 3
