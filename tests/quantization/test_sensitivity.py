"""Layer sensitivity (sensitivity.py): the one graph for all units gives the numbers one session
per unit gives.

Tolerance: 2 % of the value. Both compute each unit on quantised inputs, but the one graph's
fp32 part may run other float kernels than a lone fp32 graph (1e-7 apart), which moves a few
activations across an int8 rounding boundary upstream of the unit: measured 0.3 % at most on
ResNet-18. An output the unit does not feed is exactly 0 in both. The ranking by max error is
the same wherever two units differ by more than the tolerance.
"""

import numpy as np
import pytest

from subtune.quantization import CalibrationSet
from subtune.quantization.compare import run_batches
from subtune.quantization.fallback import float_weights, quantised_units, serialize
from subtune.quantization.int8 import quantize_int8
from subtune.quantization.sensitivity import sensitivity_one_graph, sensitivity_per_session
from tests.quantization.conftest import images, tiny_graph

RTOL = 0.02


@pytest.fixture(scope="module")
def tiny_resnet_graph():
    """subtune:tiny_resnet at 32 px with two tasks: a real compile (merges, split) in seconds."""
    from subtune.compiler.pipeline import CompileOptions, compile_plan
    from subtune.compiler.plan import Plan
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)
    _, bb = base.build()
    tasks = [synthetic_task(base, "mid", [2, 3], seed=1, backbone=bb),
             synthetic_task(base, "tail", [3, 4], seed=2, backbone=bb)]
    plan = compile_plan(Plan(base, tasks, input_size=(32, 32)), CompileOptions(verify=False, check_tensorrt=False))
    return plan.onnx


def _both(fp32, size, target, count=24, chunk_nodes=None):
    q = quantize_int8(fp32, CalibrationSet(images(16, size=size, seed=1)), "minmax", target).model
    names = [v.name for v in fp32.graph.outputs]
    x = images(count, size=size, seed=3)
    emulate = target == "tensorrt"
    units, weights = quantised_units(q), float_weights(fp32)
    kw = {} if chunk_nodes is None else {"chunk_nodes": chunk_nodes}
    one = sensitivity_one_graph(q, weights, units, x, names, emulate_qdq=emulate, **kw)
    refs = run_batches(serialize(fp32), x, names)
    each = sensitivity_per_session(q, weights, units, refs, x, names, names, emulate_qdq=emulate)
    return one, each, names


def _assert_same(one, each, names):
    assert [r["node"] for r in one.rows] == [r["node"] for r in each.rows]
    for a, b in zip(one.rows, each.rows):
        for o in names:
            x, y = a["relative_logit_error"][o], b["relative_logit_error"][o]
            assert (x == 0) == (y == 0), (a["label"], o, x, y)
            assert x == pytest.approx(y, rel=RTOL), (a["label"], o, x, y)
    a = np.array([r["max_error"] for r in one.rows])
    b = np.array([r["max_error"] for r in each.rows])
    clearly_above = a[:, None] > a[None, :] * (1 + 2 * RTOL)  # pairs the tolerance cannot reorder
    assert (b[:, None] > b[None, :])[clearly_above].all()


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_one_graph_equals_one_session_per_unit_on_the_hand_built_graph(target):
    one, each, names = _both(tiny_graph(), 8, target)
    _assert_same(one, each, names)
    assert one.sessions == 1 and each.sessions == len(one.rows)


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_one_graph_equals_one_session_per_unit_on_a_compiled_graph(tiny_resnet_graph, target):
    one, each, names = _both(tiny_resnet_graph, 32, target, chunk_nodes=150)  # a small chunk: several sessions
    _assert_same(one, each, names)
    assert 1 < one.sessions < len(one.rows)
    assert one.extra["units_reaching_outputs"] == len(one.rows)
    # a task's own layers never reach the base output or the other task's
    for row in one.rows:
        if row["label"].startswith("tasks.0."):
            assert row["relative_logit_error"]["base"] == row["relative_logit_error"]["tail"] == 0
            assert row["relative_logit_error"]["mid"] > 0


def test_where_the_one_graph_cannot_be_built_each_unit_gets_a_session(monkeypatch, caplog):
    import subtune.quantization.sensitivity as sensitivity
    from subtune.quantization.mixed import layer_sensitivity

    fp32 = tiny_graph()
    q = quantize_int8(fp32, CalibrationSet(images(16, seed=1)), "minmax", "tensorrt").model
    names = [v.name for v in fp32.graph.outputs]
    x = images(16, seed=3)
    refs = run_batches(serialize(fp32), x, names)
    units, weights = quantised_units(q), float_weights(fp32)
    one = layer_sensitivity(q, weights, units, refs, x, names, names, emulate_qdq=True)
    monkeypatch.setattr(sensitivity, "EXTERNAL_DATA_THRESHOLD", 1)  # as if fp32 + int8 weights passed 2 GiB
    with caplog.at_level("WARNING"):
        each = layer_sensitivity(q, weights, units, refs, x, names, names, emulate_qdq=True)
    assert one.method == "one graph" and each.method == "one session per unit" and each.sessions == len(units)
    assert "too large for one serialized graph" in each.note and "one session per layer" in caplog.text
    _assert_same(one, each, names)
