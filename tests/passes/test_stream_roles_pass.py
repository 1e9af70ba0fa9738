"""RecordStreamRolesPass on small hand-built graphs carrying the exporter's scope metadata."""

import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from subtune.passes import RecordStreamRolesPass, StripExportMetadataPass
from subtune.passes.record_stream_roles import ROLE_KEY, SCOPE_KEY, stream_role

ROLES = {"base": "base", "tasks.0": "task:dogs", "forks.fork_dogs_before_block2": "fork:dogs",
         "merges.merge_after_block3": "merge", "split_heads": "split"}


def _graph(ops):
    """A chain of nodes; `ops`: (op_type, scope list or None, torch's repr format or JSON)."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4])
    nodes, prev = [], "images"
    for i, (op, _, _) in enumerate(ops):
        inputs = [prev, prev] if op == "Concat" else [prev]
        attrs = {"axis": 0} if op == "Concat" else {}
        nodes.append(helper.make_node(op, inputs, [f"v{i}"], name=f"node_{i}", **attrs))
        prev = f"v{i}"
    y = helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)
    model = ir.serde.deserialize_model(helper.make_model(helper.make_graph(nodes, "g", [x], [y])))
    for node, (_, scope, as_repr) in zip(model.graph, ops):
        if scope is not None:
            path = ["", *scope, f"op{node.name}"]
            node.metadata_props[SCOPE_KEY] = repr(path) if as_repr else str(path).replace("'", '"')
    return model


def test_each_node_gets_the_role_of_its_innermost_stream_part():
    m = _graph([("Relu", ["base.layer1", "base.layer1.0"], True),
                ("Reshape", ["forks.fork_dogs_before_block2"], True),
                ("Relu", ["tasks.0.blocks.0", "tasks.0.blocks.0.conv1"], False),
                ("Concat", ["merges.merge_after_block3"], True),
                ("Relu", None, True),  # no scope: the base network's (the lowering does no arithmetic itself)
                ("Reshape", ["split_heads"], False),
                ("Relu", ["tasks.01.head"], True)])  # a path that only starts like `tasks.0`
    assert RecordStreamRolesPass(ROLES)(m).modified
    assert [stream_role(n) for n in m.graph] == ["base", "fork:dogs", "task:dogs", "merge", "base", "split", "base"]
    assert not RecordStreamRolesPass(ROLES)(m).modified  # idempotent


def test_a_merge_the_exporter_did_not_attribute_fails_the_compile():
    m = _graph([("Relu", ["base.layer1"], True), ("Concat", ["base.layer2"], True)])  # the merge's scope lost
    with pytest.raises(RuntimeError, match="merge 'merges.merge_after_block3' exported as \\[\\]"):
        RecordStreamRolesPass(ROLES)(m)
    m = _graph([("Relu", ["merges.merge_after_block3"], True), ("Reshape", ["split_heads"], True)])
    with pytest.raises(RuntimeError, match="expected one Concat on axis 0"):
        RecordStreamRolesPass(ROLES)(m)
    m = _graph([("Concat", ["merges.merge_after_block3"], True)])
    with pytest.raises(RuntimeError, match="no exported node is attributed to the split 'split_heads'"):
        RecordStreamRolesPass(ROLES)(m)


def test_strip_keeps_the_roles_and_drops_the_exporter_metadata():
    m = _graph([("Relu", ["tasks.0"], True), ("Relu", ["base"], True)])
    for node in m.graph:
        node.metadata_props["pkg.torch.onnx.stack_trace"] = "/home/someone/file.py:1"
    RecordStreamRolesPass({"base": "base", "tasks.0": "task:dogs"})(m)
    assert StripExportMetadataPass()(m).modified
    assert [dict(n.metadata_props) for n in m.graph] == [{ROLE_KEY: "task:dogs"}, {ROLE_KEY: "base"}]
    assert not StripExportMetadataPass()(m).modified
    loaded = ir.from_proto(ir.to_proto(m))  # node metadata survives serialisation
    assert [stream_role(n) for n in loaded.graph] == ["task:dogs", "base"]
