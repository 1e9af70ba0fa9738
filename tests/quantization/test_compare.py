"""Precision-aware verification: the thresholds (compare.py rules 1-4), labels, FP16 on ORT CPU."""

import numpy as np
import onnx_ir as ir
import pytest

from subtune.errors import SubtuneError, VerificationError
from subtune.quantization import CalibrationSet, PrecisionOptions, reduce_precision, verify_reduced
from subtune.quantization.compare import OutputAgreement, check_base_pinned, check_thresholds, labelled_outputs
from tests.quantization.conftest import images, tiny_graph

LIMITS = dict(min_agreement=0.9, max_accuracy_drop=0.01, fp16_tolerance=1e-2)


def _row(**kw):
    return OutputAgreement(**{"output": "cats", "agreement": 1.0, "max_abs_error": 0.0, "mean_abs_error": 0.0,
                              "scale": 1.0, **kw})


def test_rows_within_thresholds_pass():
    check_thresholds([_row(agreement=0.95, accuracy_fp32=0.9, accuracy=0.895, max_abs_error=5e-3)], "fp16", **LIMITS)


@pytest.mark.parametrize("row, precision, message", [
    (dict(agreement=0.8), "int8", "top-1 agreement with fp32 is 80.0%, below --min-agreement 90.0%"),  # rule 1
    (dict(accuracy_fp32=0.9, accuracy=0.85), "int8", "a drop of 5.0% > --max-accuracy-drop 1.0%"),  # rule 2
    (dict(max_abs_error=0.05), "fp16", "differs from fp32 by 5.00e-02 of its scale"),  # rule 3
])
def test_thresholds_fail_the_compile_in_one_line(row, precision, message):
    with pytest.raises(VerificationError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        check_thresholds([_row(**row)], precision, **LIMITS)
    assert "\n" not in str(e.value) and "'cats'" in str(e.value)


def test_int8_error_size_alone_is_not_a_failure():
    check_thresholds([_row(max_abs_error=0.2)], "int8", **LIMITS)  # int8 is judged by agreement and accuracy


def test_a_moving_base_output_is_a_compiler_bug():  # rule 4
    check_base_pinned(0.0)
    with pytest.raises(VerificationError, match="compiler bug"):
        check_base_pinned(1e-7)


class _Task:
    def __init__(self, name, classes=None, n=3, synthetic=False):
        self.name, self.classes, self.num_classes = name, classes, n
        self.meta = {"synthetic": True} if synthetic else {}


def test_accuracy_only_where_the_labels_mean_the_task_classes():
    data = CalibrationSet(images(4), labels=[0, 1, 2, 0], classes=["a", "b", "c"])
    tasks = [_Task("named", ["a", "b", "c"]), _Task("renamed", ["x", "y", "z"]), _Task("unnamed"),
             _Task("wider", n=5), _Task("synthetic", synthetic=True)]
    assert labelled_outputs(tasks, data) == {"named", "unnamed"}
    assert labelled_outputs(tasks, CalibrationSet(images(4))) == set()


def test_bad_calibration_images_are_refused():
    with pytest.raises(SubtuneError, match=r"\[N, 3, H, W\]"):
        CalibrationSet(np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(SubtuneError, match="labels of shape"):
        CalibrationSet(images(4), labels=[0, 1])


def test_fp16_runs_on_onnxruntime_cpu_within_tolerance():
    model, data = tiny_graph(), CalibrationSet(images(24, seed=3))
    options = PrecisionOptions("fp16", data).check()
    reduced = reduce_precision(model, options, data)
    graph = reduced.model.graph
    assert {v.name: v.dtype for v in [*graph.inputs, *graph.outputs]} == {
        "images": ir.DataType.FLOAT, "base": ir.DataType.FLOAT, "a": ir.DataType.FLOAT, "z": ir.DataType.FLOAT}
    convs = [n for n in graph if n.op_type == "Conv"]
    assert convs and all(n.inputs[1].dtype == ir.DataType.FLOAT16 for n in convs)
    heads = [n for n in graph if n.op_type == "Gemm"]
    assert all(n.inputs[1].dtype == ir.DataType.FLOAT for n in heads)  # logits computed in fp32
    ser = lambda m: ir.to_proto(m).SerializeToString()  # noqa: E731
    report = verify_reduced(ser(model), ser(reduced.model), None, data, ["base", "a", "z"], [], options)
    assert all(o["relative_error"] < 1e-2 and o["agreement"] >= 0.9 for o in report["outputs"])
    assert report["fp16_tolerance"] == 1e-2 and "base_output_vs_base_only" not in report


def test_fp16_without_images_checks_on_random_ones():
    data = PrecisionOptions("fp16").check().calibration_set("any", None, [], (8, 8))
    assert data.images.shape == (32, 3, 8, 8) and "random" in data.source
