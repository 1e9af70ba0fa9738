"""Graphs over 2 GiB (files.py): quantised and checked from files with external data. A real graph
that size takes minutes and gigabytes; these tests lower the threshold so a tiny graph takes the
same path (every file written and read for real), and hold the threshold equal to the compiler's."""

import numpy as np
import onnx_ir as ir
import pytest

import subtune.compiler.export as export
import subtune.quantization.files as files
from subtune.errors import VerificationError
from subtune.quantization import CalibrationSet, CheckSet, PrecisionOptions
from subtune.quantization.compare import graph_digest
from tests.quantization.conftest import images, tiny_graph


def test_the_threshold_is_the_compilers():
    assert files.EXTERNAL_DATA_THRESHOLD == export.EXTERNAL_DATA_THRESHOLD


def test_digest_is_what_the_graph_computes_however_it_is_stored(tmp_path):
    model = tiny_graph()
    as_bytes = ir.to_proto(model).SerializeToString()
    export.write_onnx(model, tmp_path / "aligned.onnx", external=True)  # the compiler's layout (aligned)
    ir.save(model, tmp_path / "packed.onnx", external_data="packed.onnx.data", size_threshold_bytes=0)
    digest = graph_digest(as_bytes)
    assert graph_digest(tmp_path / "aligned.onnx") == graph_digest(tmp_path / "packed.onnx") == digest
    model.metadata_props["subtune.precision"] = "int8"  # metadata computes nothing
    assert graph_digest(ir.to_proto(model).SerializeToString()) == digest
    weight = model.graph.initializers["base.stem.weight"]
    weight.const_value = ir.tensor(weight.const_value.numpy() * 2, name=weight.name)
    assert graph_digest(ir.to_proto(model).SerializeToString()) != digest


@pytest.fixture
def tiny_threshold(monkeypatch):
    """Every graph counts as over 2 GiB: the compiler writes it with external data, quantisation
    goes through files."""
    monkeypatch.setattr(export, "EXTERNAL_DATA_THRESHOLD", 1)
    monkeypatch.setattr(files, "EXTERNAL_DATA_THRESHOLD", 1)


@pytest.fixture(scope="module")
def tiny_resnet():
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)
    _, bb = base.build()
    return base, [synthetic_task(base, "t", [3, 4], seed=1, backbone=bb)]


def _compile(tiny_resnet, **precision):
    from subtune.compiler.pipeline import CompileOptions, compile_plan
    from subtune.compiler.plan import Plan

    base, tasks = tiny_resnet
    data = CalibrationSet(images(16, size=32, seed=1), check=CheckSet(images(24, size=32, seed=2)))
    options = PrecisionOptions(calibration=data, measure_latency=False, **precision).check()
    return compile_plan(Plan(base, list(tasks), input_size=(32, 32)),
                        CompileOptions(verify_batches=(1, 3), precision=options))


@pytest.mark.parametrize("precision, target", [("int8", "cpu"), ("int8", "tensorrt"), ("fp16", "auto")])
def test_a_graph_over_the_threshold_is_quantised_and_checked_from_files(tiny_threshold, tiny_resnet, precision,
                                                                        target):
    plan = _compile(tiny_resnet, precision=precision, int8_target=target, min_agreement=0.5)
    assert plan.report["external_data"] and files.too_large(plan.fp32_onnx)
    ver = plan.report["precision"]["verification"]
    assert [o["output"] for o in ver["outputs"]] == ["base", "t"]
    if precision == "int8":
        assert ver["base_output_vs_base_only"]["max_abs_difference"] == 0.0
        assert ver["outputs_computed_by_quantize"] == ["fp32", "int8"]  # the digest matched across file layouts
        assert any(n.op_type == "QuantizeLinear" for n in plan.onnx.graph)
        # no external tensor left pointing into a removed temporary folder
        assert not any(isinstance(v.const_value, ir.ExternalTensor) for v in plan.onnx.graph.initializers.values())
    else:
        assert max(o["relative_error"] for o in ver["outputs"]) < 1e-2


def test_over_the_threshold_a_failing_plain_int8_is_refused_with_why_no_search(tiny_threshold, tiny_resnet):
    with pytest.raises(VerificationError, match=r"plain int8 misses its target \(int8 output '(base|t)'.*below "
                                                r"--min-agreement.*not run on a graph over 2 GiB.*fewer tasks per graph"):
        _compile(tiny_resnet, precision="int8", int8_target="cpu", min_agreement=1.0, max_accuracy_drop=0.0)


def test_digest_reads_each_tensor_where_the_file_says(tmp_path):
    model = tiny_graph()
    ir.save(model, tmp_path / "m.onnx", external_data="m.onnx.data", size_threshold_bytes=0)
    digest = graph_digest(tmp_path / "m.onnx")
    assert digest == graph_digest(ir.to_proto(model).SerializeToString())
    data = (tmp_path / "m.onnx.data").read_bytes()
    assert np.frombuffer(data[:4], np.float32)[0] != 123
    (tmp_path / "m.onnx.data").write_bytes(np.float32(123).tobytes() + data[4:])  # the first weight's first float
    assert graph_digest(tmp_path / "m.onnx") != digest
