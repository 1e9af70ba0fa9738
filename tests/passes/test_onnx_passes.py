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
