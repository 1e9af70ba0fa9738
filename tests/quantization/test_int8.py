"""INT8 quantisation on the hand-built multi-task graph: the pinned base output, the QDQ scheme."""

import numpy as np
import onnx_ir as ir
import pytest

from subtune.passes import CheckTensorRTCompatPass
from subtune.quantization import CalibrationSet, PrecisionOptions, reduce_precision
from subtune.quantization.int8 import quantize_int8
from subtune.quantization.compare import run_batches
from tests.quantization.conftest import images, tiny_base_only, tiny_graph


@pytest.fixture(scope="module")
def calibration():
    return CalibrationSet(images(24, seed=1))


@pytest.fixture(scope="module")
def quantised(calibration):
    return quantize_int8(tiny_graph(), calibration, "minmax")


def _base(model, x, target):
    """The base output as the target's arithmetic computes it (compare.py: QDQ as written for
    tensorrt graphs, ONNX Runtime's fused uint8 kernels for cpu graphs)."""
    return run_batches(ir.to_proto(model).SerializeToString(), x, ["base"], emulate_qdq=target == "tensorrt")[0]


@pytest.mark.parametrize("target, method", [("tensorrt", "minmax"), ("tensorrt", "entropy"),
                                            ("tensorrt", "percentile"), ("cpu", "minmax")])
def test_base_output_is_bit_exact_with_tasks_and_alone(calibration, target, method):
    q = quantize_int8(tiny_graph(), calibration, method, target)
    alone = quantize_int8(tiny_base_only(), calibration, method, target).model  # built without tasks, own names
    x = images(20, seed=7)  # other images than the calibration's
    with_tasks = _base(q.model, x, target)
    np.testing.assert_array_equal(with_tasks, _base(q.base_only, x, target))
    np.testing.assert_array_equal(with_tasks, _base(alone, x, target))
    for batch in (1, 3):  # other batch sizes: the float heads may round differently, nothing more
        np.testing.assert_allclose(_base(q.model, x[:batch], target), with_tasks[:batch], rtol=1e-6, atol=1e-6)


def test_tasks_get_their_own_ranges_and_merges_report_clipping(quantised):
    report = quantised.report
    assert report["tensors"]["pinned_to_base"] > 0 and report["tensors"]["task_calibrated"] > 0
    merges = {m["merge"]: m for m in report["merges"]}
    assert set(merges) == {"merge_after_block1/Concat", "final_merge/Concat"}
    (rejoining,) = merges["merge_after_block1/Concat"]["rejoining"]
    assert rejoining["tensor"] == "a1" and rejoining["ratio"] > 0


def _initializer(model, name):
    return model.graph.initializers[name].const_value.numpy()


def test_qdq_scheme_is_what_tensorrt_takes(quantised):
    model = quantised.model
    qdq = [n for n in model.graph if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        assert not _initializer(model, node.inputs[2].name).any()  # zero point 0
        assert node.inputs[2].dtype == ir.DataType.INT8
    weights = [n for n in qdq if n.op_type == "DequantizeLinear" and n.inputs[0].is_initializer()]
    assert weights and all(n.inputs[0].dtype == ir.DataType.INT8 for n in weights)  # no int32 biases
    conv_weights = [n for n in weights if any(c.op_type == "Conv" for c in n.outputs[0].consumers())]
    assert all(n.attributes["axis"].as_int() == 0 and _initializer(model, n.inputs[1].name).size == 4
               for n in conv_weights)  # per output channel
    outputs = {v.name: v.producer().op_type for v in model.graph.outputs}
    assert outputs == {"base": "Gemm", "a": "Gemm", "z": "Gemm"}  # logits stay float
    CheckTensorRTCompatPass(raise_on_error=True)(model)


def test_int8_without_calibration_images_is_refused():
    from subtune.errors import SubtuneError

    with pytest.raises(SubtuneError, match="`precision` int8 needs `calibration`"):
        PrecisionOptions("int8").check()


def test_reduce_precision_records_precision_and_keeps_metadata(calibration):
    model = tiny_graph()
    model.metadata_props["subtune.arch"] = "hand-built"
    reduced = reduce_precision(model, PrecisionOptions("int8", calibration).check(), calibration)
    assert reduced.model.metadata_props["subtune.precision"] == "int8"
    assert reduced.model.metadata_props["subtune.arch"] == "hand-built"
    assert [v.name for v in reduced.model.graph.outputs] == ["base", "a", "z"]
    assert not isinstance(reduced.model.graph.inputs[0].shape[0], int)  # batch stays dynamic


def test_cpu_target_is_uint8_and_not_for_tensorrt(calibration):
    q = quantize_int8(tiny_graph(), calibration, "minmax", "cpu")
    assert q.report["scheme"]["tensorrt_compatible"] is False
    p = CheckTensorRTCompatPass(raise_on_error=False)
    p(q.model)
    assert any("quantises to UINT8" in f for f in p.findings)
    assert not PrecisionOptions("int8", calibration, int8_target="cpu").check().tensorrt_compatible


def test_same_inputs_give_byte_identical_graphs(calibration):
    def once():
        return ir.to_proto(reduce_precision(tiny_graph(), PrecisionOptions("int8", calibration).check(),
                                            calibration).model).SerializeToString()

    assert once() == once()
