"""INT8 base pinning reads the stream roles the compiler records in each node, never node names:
renaming every node (a cosmetic change) leaves the pinned base output bit for bit the same, and
a graph without roles is refused with one line that says to recompile."""

import numpy as np
import onnx_ir as ir
import pytest

from subtune.errors import SubtuneError
from subtune.passes.record_stream_roles import MERGE, ROLE_KEY, SPLIT, stream_role
from subtune.quantization import CalibrationSet
from subtune.quantization.base_stream import base_path, extract_base_stream
from subtune.quantization.compare import base_output_difference, run_batches
from subtune.quantization.int8 import quantize_int8
from tests.quantization.conftest import images, tiny_base_only, tiny_graph

OLD_NAME_PREFIXES = ("merge_after_block", "final_merge", "split_heads/")  # what the name-based lookup matched


def _bytes(model):
    return ir.to_proto(model).SerializeToString()


def _renamed(model: ir.Model) -> ir.Model:
    """A copy with every node renamed (in reverse graph order, so no old name survives anywhere)."""
    out = model.clone()
    nodes = list(out.graph)
    for i, node in enumerate(reversed(nodes)):
        node.name = f"op{i:04d}"
    assert not [n for n in out.graph if n.name.startswith(OLD_NAME_PREFIXES)]  # a name lookup finds nothing
    return out


def _without_roles(model: ir.Model) -> ir.Model:
    out = model.clone()
    for node in out.graph:
        node.metadata_props.pop(ROLE_KEY, None)
    return out


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_renamed_nodes_keep_the_base_output_pinned_bit_for_bit(target):
    calibration = CalibrationSet(images(24, seed=1))
    renamed = _renamed(tiny_graph())
    q = quantize_int8(renamed, calibration, "minmax", target)
    alone = quantize_int8(tiny_base_only(), calibration, "minmax", target).model  # built without tasks
    assert q.report["tensors"]["pinned_to_base"] > 0
    assert len(q.report["merges"]) == 2  # both merges found under their new names
    emulate = target == "tensorrt"
    x = images(20, seed=7)
    for batch in (x, x[:3]):
        assert base_output_difference(_bytes(q.model), _bytes(q.base_only), batch, emulate_qdq=emulate) == 0.0
        assert base_output_difference(_bytes(q.model), _bytes(alone), batch, emulate_qdq=emulate) == 0.0
    # and the whole graph is the one quantised under the original names, node for node
    original = quantize_int8(tiny_graph(), calibration, "minmax", target)
    for got, ref in zip(run_batches(_bytes(q.model), x, ["base", "a", "z"], emulate_qdq=emulate),
                        run_batches(_bytes(original.model), x, ["base", "a", "z"], emulate_qdq=emulate)):
        np.testing.assert_array_equal(got, ref)


def test_renamed_graph_has_the_same_base_stream():
    renamed, model = _renamed(tiny_graph()), tiny_graph()
    assert base_path(renamed) == base_path(model)
    assert extract_base_stream(renamed).aliases == extract_base_stream(model).aliases


def test_graph_without_roles_is_refused_with_one_line_saying_recompile():
    model = _without_roles(tiny_graph())
    calibration = CalibrationSet(images(4, seed=1))
    for call in (lambda: quantize_int8(model, calibration), lambda: base_path(model),
                 lambda: extract_base_stream(model)):
        with pytest.raises(SubtuneError, match="records no stream roles") as e:
            call()
        assert "\n" not in str(e.value) and "recompile" in str(e.value)


def test_compiled_graphs_record_a_role_on_every_node(resnet18_graphs):
    """The real compiler's roles (ResNet-18, four tasks): they survive serialisation, the merges are
    the batch Concats the schedule has, the split is there, and a base-only graph is all base."""
    four = ir.from_proto(ir.to_proto(resnet18_graphs["four_tasks"]))  # as loaded from a file
    roles = [stream_role(n) for n in four.graph]
    assert None not in roles
    assert {r for r in roles if r.startswith("task:")} == {"task:early", "task:overlap", "task:last", "task:siam"}
    merges = [n for n in four.graph if stream_role(n) == MERGE]
    # early ends at block 3, overlap at 5, siam at 6: merged back; last ends at block 8: the final merge
    assert len(merges) == 4 and {n.op_type for n in merges} == {"Concat"}
    assert all(n.attributes["axis"].as_int() == 0 for n in merges)
    assert [n for n in four.graph if stream_role(n) == SPLIT]
    assert {stream_role(n) for n in resnet18_graphs["base_only"].graph} == {"base"}


def test_compiled_graph_renamed_keeps_the_base_output_pinned(resnet18_graphs):
    """A real compiled graph with every node renamed: the INT8 base output with four tasks still
    equals the base-only graph's, exactly."""
    calibration = CalibrationSet(np.random.default_rng(3).standard_normal((16, 3, 32, 32), dtype=np.float32))
    four = quantize_int8(_renamed(resnet18_graphs["four_tasks"]), calibration)
    alone = quantize_int8(resnet18_graphs["base_only"], calibration)
    other = np.random.default_rng(4).standard_normal((10, 3, 32, 32), dtype=np.float32)
    for x in (calibration.images, other, other[:1]):
        assert base_output_difference(_bytes(four.model), _bytes(alone.model), x, emulate_qdq=True) == 0.0
    assert four.report["tensors"]["pinned_to_base"] > 0 and len(four.report["merges"]) == 4
