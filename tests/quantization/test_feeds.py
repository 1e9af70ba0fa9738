"""feeds.py: a graph with a task mask input (issue #20) is fed all true when checked, timed or
calibrated here; any other extra input is refused in one line."""

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from subtune.errors import SubtuneError
from subtune.quantization.calibration import tensor_ranges
from subtune.quantization.compare import run_batches
from subtune.quantization.timing import latency_ratios
from tests.quantization.conftest import images


def _masked(extra_type=TensorProto.BOOL, k=3) -> ir.Model:
    """out = mean(images over H, W) * tasks: each task's column is zero where its mask is false."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])
    mask = helper.make_tensor_value_info("tasks", extra_type, ["batch", k])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["mean"], axis=1),
             helper.make_node("Cast", ["tasks"], ["on"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["mean", "on"], ["out"])]
    graph = helper.make_graph(nodes, "g", [x, mask], [out])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))


def test_a_task_mask_is_fed_all_true():
    model = _masked()
    x = images(20, seed=4)
    blob = ir.to_proto(model).SerializeToString()
    (got,) = run_batches(blob, x, ["out"])  # 20 images: batches of 16 and 4
    np.testing.assert_allclose(got, x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert latency_ratios(blob, blob, x, rounds=1, runs=1)["batch_8"]["fp32_ms"] > 0
    ranges = tensor_ranges(model, x, "minmax")
    low, high = (float(np.asarray(v).item()) for v in ranges["out"].range_value)
    assert low < 0 < high  # measured with every task on: the masked column would be all 0


def test_any_other_extra_input_is_refused_in_one_line():
    with pytest.raises(SubtuneError, match=r"graph input 'tasks' \(tensor\(float\).*expected only `images` and a "
                                           r"task mask") as e:
        run_batches(ir.to_proto(_masked(TensorProto.FLOAT)).SerializeToString(), images(2), ["out"])
    assert "\n" not in str(e.value)
