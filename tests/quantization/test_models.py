"""Real compiled graphs: the guard on the base output (ResNet-18, four tasks vs none), FP16 on ONNX
Runtime CPU, and the whole compile pipeline with --precision int8 (EfficientNet-Lite0)."""

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from subtune.passes import CheckTensorRTCompatPass
from subtune.quantization import CalibrationSet, PrecisionOptions, reduce_precision, verify_reduced
from subtune.quantization.compare import base_output_difference
from subtune.quantization.int8 import quantize_int8

IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def _bytes(model):
    return ir.to_proto(model).SerializeToString()


@pytest.fixture(scope="module")
def fashion():
    """Real images: calibration, and other images to compare on."""
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST (Debian package dataset-fashion-mnist) not installed")
    from subtune.quantization.calibration import load_calibration_set

    return (load_calibration_set("fashion-mnist", size=32, image_size=(32, 32), **IMAGENET),
            load_calibration_set("fashion-mnist", size=24, image_size=(32, 32), seed=9, **IMAGENET))


def test_int8_base_output_with_four_tasks_equals_the_base_only_graph(resnet18_graphs, fashion):
    """THE guard: tasks added, base output unchanged, bit for bit (tolerance: exactly 0)."""
    calibration, other = fashion
    four = quantize_int8(resnet18_graphs["four_tasks"], calibration)
    alone = quantize_int8(resnet18_graphs["base_only"], calibration)  # compiled without tasks, on its own
    for images in (calibration.images, other.images):
        assert base_output_difference(_bytes(four.model), _bytes(alone.model), images, emulate_qdq=True) == 0.0
    assert four.report["tensors"]["pinned_to_base"] > 0
    CheckTensorRTCompatPass(raise_on_error=True)(four.model)


def test_fp16_four_task_graph_runs_on_onnxruntime_cpu_within_tolerance(resnet18_graphs, fashion):
    calibration, _ = fashion
    model = resnet18_graphs["four_tasks"]
    options = PrecisionOptions("fp16", calibration).check()
    reduced = reduce_precision(model, options, calibration)
    names = [v.name for v in model.graph.outputs]
    report = verify_reduced(_bytes(model), _bytes(reduced.model), None, calibration, names, [], options)
    assert [o["output"] for o in report["outputs"]] == names
    assert max(o["relative_error"] for o in report["outputs"]) < 1e-2
    CheckTensorRTCompatPass(raise_on_error=True)(reduced.model)


def test_compile_pipeline_int8_efficientnet_lite0():
    from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
    from subtune.compiler.plan import Plan
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base("timm:efficientnet_lite0", {"num_classes": 10}, seed=0)
    _, bb = base.build()
    tasks = [synthetic_task(base, "mid", [9, 10], seed=1, backbone=bb),  # merges back before block 11
             synthetic_task(base, "tail", [15, 16], seed=2, backbone=bb)]  # ends at the last block
    images = np.random.default_rng(0).standard_normal((16, 3, 64, 64), dtype=np.float32)
    precision = PrecisionOptions("int8", CalibrationSet(images), min_agreement=0.0, int8_target="tensorrt",
                                 fallback=False, sensitivity=False, measure_latency=False).check()
    plan = compile_plan(Plan(base, tasks, input_size=(64, 64)),
                        CompileOptions(verify_batches=(1, 3), precision=precision))
    steps = list(plan.report["seconds"])
    assert steps[:2] == ["validate", "load calibration data"]
    assert [s for s in steps if s in ("quantize", "verify precision", "check TensorRT compatibility (int8)")] == [
        "quantize", "verify precision", "check TensorRT compatibility (int8)"]
    report = plan.report["precision"]
    assert report["verification"]["base_output_vs_base_only"]["max_abs_difference"] == 0.0
    assert [o["output"] for o in report["verification"]["outputs"]] == ["base", "mid", "tail"]
    assert plan.onnx.metadata_props["subtune.precision"] == "int8"
    assert any(n.op_type == "QuantizeLinear" for n in ir.from_proto(ir.to_proto(plan.onnx)).graph)
    assert len(serialize(plan)) < 0.5 * len(_bytes(plan.fp32_onnx))  # int8 weights
