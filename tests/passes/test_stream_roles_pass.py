"""RecordStreamRolesPass on small hand-built graphs carrying the exporter's scope metadata."""

import re

import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from subtune.passes import RecordStreamRolesPass, StripExportMetadataPass
from subtune.passes.record_stream_roles import ROLE_KEY, SCOPE_KEY, SIZE_SCOPE, stream_role

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
                ("Relu", ["base.layer4"], True),
                ("Reshape", ["split_heads"], False)])
    assert RecordStreamRolesPass(ROLES)(m).modified
    assert [stream_role(n) for n in m.graph] == ["base", "fork:dogs", "task:dogs", "merge", "base", "split"]
    assert not RecordStreamRolesPass(ROLES)(m).modified  # idempotent


@pytest.mark.parametrize("scope,why", [(None, "the exporter recorded no scope for it"),
                                       ([], "its exporter scope opnode_1 lies under none"),  # the forward's own op
                                       (["tasks.01.head"], "its exporter scope tasks.01.head/opnode_1 lies under none")])
def test_a_node_without_evidence_fails_naming_it(scope, why):
    """No silent default: a node outside every part (no scope, a path that only starts like
    `tasks.0`, arithmetic in the lowering's own forward) fails the compile, by name."""
    m = _graph([("Relu", ["base.layer1"], True), ("Relu", scope, True), ("Reshape", ["split_heads"], True)])
    with pytest.raises(RuntimeError, match=r"node node_1 \(Relu\) has no stream role: " + re.escape(why)):
        RecordStreamRolesPass(ROLES)(m)


def _sizes_graph():
    """images -> Shape -> Squeeze (the exporter's size of `images`), rows -> Shape -> Squeeze, their sum."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4])
    r = helper.make_tensor_value_info("rows_0", TensorProto.INT64, ["n"])
    out = helper.make_tensor_value_info("total", TensorProto.INT64, [])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    nodes = [helper.make_node("Shape", ["images"], ["b1"], name="shape_images", start=0, end=1),
             helper.make_node("Squeeze", ["b1", "axes"], ["b"], name="squeeze_images"),
             helper.make_node("Shape", ["rows_0"], ["n1"], name="shape_rows", start=0, end=1),
             helper.make_node("Squeeze", ["n1", "axes"], ["n"], name="squeeze_rows"),
             helper.make_node("Add", ["b", "n"], ["total"], name="add_sizes")]
    model = ir.serde.deserialize_model(helper.make_model(helper.make_graph(nodes, "g", [x, r], [out],
                                                                           initializer=[axes])))
    for node in model.graph:
        node.metadata_props[SCOPE_KEY] = repr([SIZE_SCOPE, f"sym_size_{node.name}"])
    return model


def test_sizes_take_the_role_of_the_input_they_read():
    """Rule 2: the exporter's size nodes (no module, its own marker) are evidence by their input;
    a sum of several inputs' sizes is a merged stream's row count."""
    m = _sizes_graph()
    RecordStreamRolesPass({"base": "base"}, {"images": "base", "rows_0": "rows:dogs"})(m)
    assert {n.name: stream_role(n) for n in m.graph} == {
        "shape_images": "base", "squeeze_images": "base", "shape_rows": "rows:dogs", "squeeze_rows": "rows:dogs",
        "add_sizes": "merge"}


def test_a_size_of_an_input_without_a_role_fails():
    with pytest.raises(RuntimeError, match=r"node shape_rows \(Shape\) has no stream role"):
        RecordStreamRolesPass({"base": "base"}, {"images": "base"})(_sizes_graph())


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
