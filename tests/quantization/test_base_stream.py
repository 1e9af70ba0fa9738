"""The base stream (extract_base_stream, base_path) and range pinning, on hand-built graphs."""

import numpy as np
import pytest
from onnxruntime.quantization.calibrate import TensorData

from subtune.quantization.base_stream import base_path, extract_base_stream
from subtune.quantization.int8 import pin_base_ranges
from tests.quantization.conftest import images, run, tiny_base_only, tiny_graph


def test_extract_keeps_the_base_path_only():
    model = tiny_graph()
    nodes = [n.name for n in model.graph]
    stream = extract_base_stream(model)
    graph = stream.model.graph
    assert [v.name for v in graph.outputs] == ["base"]  # rule 1
    assert not [n for n in graph if n.op_type == "Concat"]  # rule 2: merges bypassed
    assert not [name for name in graph.initializers if name.startswith("tasks.")]  # rule 4
    flat = [n for n in graph if n.name == "base_stream/Flatten"]  # rule 3
    assert len(flat) == 1 and flat[0].outputs[0].name == "base_feat" and flat[0].inputs[0].name == "mean"
    assert stream.aliases == {"m1": "b1", "f": "c1", "view": "mean", "slice0": "mean"}
    assert [n.name for n in model.graph] == nodes  # the input model is left alone


def test_base_stream_computes_the_base_output():
    x = images(6)
    stream = extract_base_stream(tiny_graph()).model
    np.testing.assert_array_equal(run(stream, x)[0], run(tiny_graph(), x, ["base"])[0])
    np.testing.assert_allclose(run(stream, x)[0], run(tiny_base_only(), x)[0], rtol=0, atol=1e-6)


def test_base_path_stops_at_the_tasks_rejoining():
    path = base_path(tiny_graph())
    assert {"images", "s1", "b1", "m1", "c1", "f", "mean", "view", "slice0", "base_feat", "base"} <= path
    assert not path & {"a1", "z1", "z_in", "fork_view", "a_feat", "z_feat", "a", "z"}


def test_graph_without_stream_nodes_is_its_own_base_stream():
    model = tiny_base_only()
    stream = extract_base_stream(model)
    assert stream.aliases == {}
    assert [n.op_type for n in stream.model.graph] == [n.op_type for n in model.graph]


def test_graph_without_base_output_is_refused():
    model = tiny_base_only()
    model.graph.outputs[0].name = "logits"
    with pytest.raises(ValueError, match="no output named 'base'"):
        extract_base_stream(model)


def _range(lo, hi):
    return TensorData(lowest=np.float32(lo), highest=np.float32(hi))


def test_pinning_takes_base_ranges_by_name_and_alias_and_keeps_task_ranges():
    graph = {"b1": _range(-9, 9), "m1": _range(-9, 9), "a1": _range(-3, 3)}  # as measured on the multi-task graph
    base = {"b1": _range(-2, 2)}
    ranges, pinned = pin_base_ranges(graph, base, {"m1": "b1"}, on_base_path={"b1", "m1"})
    assert ranges == {"b1": (-2.0, 2.0), "m1": (-2.0, 2.0), "a1": (-3.0, 3.0)}
    assert pinned == {"b1", "m1"}


def test_pinning_refuses_a_base_path_tensor_without_a_base_range():
    with pytest.raises(RuntimeError, match="'m1' has no range from the base stream"):
        pin_base_ranges({"m1": _range(-1, 1)}, {}, {}, on_base_path={"m1"})
