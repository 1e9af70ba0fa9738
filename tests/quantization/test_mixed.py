"""Mixed precision (mixed.py): fallback surgery, layer sensitivity, the greedy, the pinned base output
of mixed graphs; held-out labels (heldout.py); --int8-target auto; the new per-output metrics."""

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from subtune.errors import SubtuneError, VerificationError
from subtune.quantization import (CalibrationSet, CheckSet, PrecisionOptions, reduce_precision, resolve_int8_target,
                                  verify_reduced)
from subtune.quantization.compare import compare_output, run_batches
from subtune.quantization.heldout import task_labels
from subtune.quantization.int8 import quantize_int8
from subtune.quantization.fallback import fall_back, float_weights, quantised_units
from subtune.quantization.mixed import fall_back_layers
from tests.quantization.conftest import images, tiny_base_only, tiny_graph

NAMES = ["base", "a", "z"]


def _bytes(model):
    return ir.to_proto(model).SerializeToString()


def _run(model, x, names=NAMES, target="tensorrt"):
    return run_batches(_bytes(model), x, names, emulate_qdq=target == "tensorrt")


@pytest.fixture(scope="module")
def calibration():
    return CalibrationSet(images(24, seed=1))


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_every_node_fallen_back_is_the_fp32_graph_exactly(calibration, target):
    fp32 = tiny_graph()
    q = quantize_int8(fp32, calibration, "minmax", target)
    back = fall_back(q.model, float_weights(fp32), {n.name for n in q.model.graph})
    assert not [n for n in back.graph if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    x = images(10, seed=5)
    for got, ref in zip(_run(back, x, target=target), run_batches(_bytes(fp32), x, NAMES)):
        np.testing.assert_array_equal(got, ref)


def test_units_are_the_computing_nodes_with_their_weights(calibration):
    units = quantised_units(quantize_int8(tiny_graph(), calibration).model)
    labels = {u.label: u.base_path for u in units}
    assert labels == {"base.stem.weight": True, "base.block1.weight": True, "base.block2.weight": True,
                      "tasks.0.block1.weight": False, "tasks.1.block2.weight": False, "node_mean": True,
                      "base.fc.weight": True, "tasks.0.head.weight": False, "tasks.1.head.weight": False}


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_mixed_base_output_with_tasks_equals_the_base_only_graph(calibration, target):
    """The pinning property survives fallbacks on the base path (shared layers before and after a merge)."""
    fp32 = tiny_graph()
    q = quantize_int8(fp32, calibration, "minmax", target)
    alone = quantize_int8(tiny_base_only(), calibration, "minmax", target)  # compiled without tasks, own names
    for labels in (["base.stem.weight"], ["base.block2.weight", "tasks.0.block1.weight"], ["base.fc.weight"]):
        mixed, base_only, matched = fall_back_layers(fp32, q.model, q.base_only, labels)
        assert matched == sorted(labels)
        alone_mixed, _, _ = fall_back_layers(tiny_base_only(), alone.model, alone.base_only, labels)
        x = images(20, seed=7)
        (with_tasks,) = _run(mixed, x, ["base"], target)
        np.testing.assert_array_equal(with_tasks, _run(base_only, x, ["base"], target)[0])
        np.testing.assert_array_equal(with_tasks, _run(alone_mixed, x, ["base"], target)[0])
        assert not np.array_equal(with_tasks, _run(q.model, x, ["base"], target)[0])  # the fallback did something


def test_sensitivity_sees_only_the_outputs_a_layer_feeds(calibration):
    data = CalibrationSet(calibration.images)
    reduced = reduce_precision(tiny_graph(), PrecisionOptions("int8", data, int8_target="tensorrt",
                                                              fallback=False, sensitivity=True).check(), data)
    layers = {s["label"]: s["relative_logit_error"] for s in reduced.report["mixed"]["sensitivity"]["layers"]}
    assert layers["tasks.0.block1.weight"]["base"] == 0 and layers["tasks.0.block1.weight"]["a"] > 0
    assert layers["tasks.1.head.weight"]["base"] == layers["tasks.1.head.weight"]["a"] == 0
    assert all(v > 0 for v in layers["base.stem.weight"].values())  # before every fork
    errors = [s["max_error"] for s in reduced.report["mixed"]["sensitivity"]["layers"]]
    assert errors == sorted(errors, reverse=True)
    assert "fallback" not in reduced.report["mixed"]


def test_greedy_falls_back_until_targets_are_met_and_verification_agrees(calibration):
    fp32 = tiny_graph()
    check = CheckSet(images(48, seed=11), source="random images")
    data = CalibrationSet(calibration.images * 0.3, check=check)  # too narrow: the check images clip
    strict = dict(int8_target="tensorrt", min_agreement=0.95, measure_latency=False)
    plain = reduce_precision(fp32, PrecisionOptions("int8", data, fallback=False, **strict).check(), data)
    with pytest.raises(VerificationError, match="'base'.*below --min-agreement 95.0%.*keep more layers in fp32"):
        verify_reduced(_bytes(fp32), _bytes(plain.model), _bytes(plain.base_only), data, NAMES, [],
                       PrecisionOptions("int8", data, **strict).check())
    options = PrecisionOptions("int8", data, **strict).check()
    mixed = reduce_precision(fp32, options, data)
    fb = mixed.report["mixed"]["fallback"]
    assert fb["passed"] and 0 < fb["layers"] <= fb["max_fallback"] == len(quantised_units(plain.model)) // 2
    assert fb["history"][0]["failing"] and not fb["history"][-1]["failing"]
    # the plain graph failed, so sensitivity was measured (every output, every unit), and what it cost is reported
    assert mixed.report["mixed"]["plain"]["failing"] == fb["history"][0]["failing"]
    sens = mixed.report["mixed"]["sensitivity"]
    assert len(sens["layers"]) == mixed.report["mixed"]["units"] and sens["method"] == "one graph"
    assert all(set(x["relative_logit_error"]) == set(NAMES) for x in sens["layers"])
    cost = mixed.report["mixed"]["cost"]
    assert cost["sessions"] == sens["sessions"] >= 1 and cost["evaluations"] == fb["evaluations"] == len(fb["history"])
    assert cost["search_seconds"] == pytest.approx(cost["sensitivity_seconds"] + cost["greedy_seconds"], abs=2e-3)
    assert mixed.model.metadata_props["subtune.calibration"].count("base.") >= 1  # fp32 layers named in metadata
    report = verify_reduced(_bytes(fp32), _bytes(mixed.model), _bytes(mixed.base_only), data, NAMES, [], options)
    assert report["base_output_vs_base_only"]["max_abs_difference"] == 0.0
    assert report["outputs_computed_by_quantize"] == ["fp32", "int8"]  # the greedy's last graph is the one written
    # fp32, the plain graph (its verification above) and the greedy's last graph: not its steps in between
    assert len(check.outputs) == 3 and len(fb["history"]) > 2
    assert all(o["confident_agreement"] >= 0.95 for o in report["outputs"])


def test_no_sensitivity_and_no_search_when_plain_int8_meets_every_target(calibration):
    fp32 = tiny_graph()
    check = CheckSet(images(48, seed=11), source="random images")
    data = CalibrationSet(calibration.images, check=check)
    options = PrecisionOptions("int8", data, int8_target="tensorrt", min_agreement=0.5, measure_latency=False).check()
    reduced = reduce_precision(fp32, options, data)
    mixed = reduced.report["mixed"]
    assert mixed["plain"]["failing"] == [] and "layers" not in mixed["sensitivity"]
    assert mixed["sensitivity"]["skipped"] == "plain int8 meets every target on the check images"
    assert mixed["fallback"]["layers"] == 0 and mixed["cost"]["evaluations"] == 1 and mixed["cost"]["sessions"] == 0
    plain = quantize_int8(fp32, data, "minmax", "tensorrt").model
    x = images(6, seed=2)
    for got, ref in zip(_run(reduced.model, x), _run(plain, x)):  # the plain graph itself
        np.testing.assert_array_equal(got, ref)
    # verify precision runs neither graph again on the check images: quantize's runs of the same graphs are reused
    report = verify_reduced(_bytes(fp32), _bytes(reduced.model), _bytes(reduced.base_only), data, NAMES, [], options)
    assert report["outputs_computed_by_quantize"] == ["fp32", "int8"]
    assert [o["agreement"] for o in report["outputs"]] == [
        mixed["plain"]["outputs"][n]["agreement"] for n in NAMES]


def test_compare_output_metrics():
    ref = np.array([[4.0, 0, 0, 0, 0, 0], [0.1, 0.2, 0, 0, 0, 0], [0, 0, 5.0, 0, 0, 0]], np.float32)
    got = ref.copy()
    got[0] = [0, 4.5, 0, 0, 0, 0]  # a confident image flips
    got[1] = [0.3, 0.2, 0, 0, 0, 0]  # an unconfident one flips
    row = compare_output("base", ref, got, np.array([0, -1, 2]))
    assert row.confident_images == 2 and row.confident_agreement == 0.5 and row.agreement == pytest.approx(1 / 3)
    assert row.accuracy_fp32 == 1.0 and row.accuracy == 0.5 and row.labelled_images == 2
    assert row.relative_logit_error == pytest.approx(np.mean([np.hypot(4, 4.5) / 4, 0.2 / np.hypot(0.1, 0.2), 0]))
    assert compare_output("x", ref, ref).top5_overlap == 1 and compare_output("x", ref, -ref).top5_overlap < 1


class _Task:
    def __init__(self, name, classes, data=None, synthetic=False):
        self.name, self.classes, self.num_classes = name, classes, len(classes)
        self.meta = {"data": {"train": data}} if data else {}
        if synthetic:
            self.meta["synthetic"] = True


def test_held_out_labels_follow_each_tasks_label_map():
    classes = ["t-shirt", "trouser", "bag", "boot"]
    labels = np.array([0, 1, 2, 3, 2])
    tasks = [_Task("all", classes, {"spec": "fashion-mnist"}),
             _Task("coarse", ["wear", "bags"], {"spec": "fashion-mnist", "label_map": "wear=0,1,3;bags=2"}),
             _Task("shoes", ["boot"], {"spec": "fashion-mnist", "label_map": "boot=3"}),
             _Task("other", ["x", "y"], {"spec": "cifar10:/d"}), _Task("syn", classes, synthetic=True)]
    out = task_labels(tasks, labels, classes, "fashion-mnist")
    assert set(out) == {"all", "coarse", "shoes"}
    assert out["coarse"].tolist() == [0, 0, 1, 0, 1] and out["shoes"].tolist() == [-1, -1, -1, 0, -1]


def test_held_out_check_set_is_the_test_split():
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST (Debian package dataset-fashion-mnist) not installed")
    options = PrecisionOptions("int8", "fashion-mnist", calibration_size=16, check_size=20).check()
    coarse = _Task("coarse", ["tops", "rest"], {"spec": "fashion-mnist", "label_map": "tops=0,2,4,6;rest=1,3,5,7,8,9"})
    data = options.calibration_set("timm:efficientnet_lite0", None, [coarse], (16, 16))
    check = data.check
    assert check.held_out and "test split" in check.source and len(check.images) == 20
    assert set(check.labels["coarse"].tolist()) == {0, 1}
    assert not any(np.array_equal(a, b) for a in check.images[:5] for b in data.images)


def test_int8_target_auto_follows_the_runtime():
    assert resolve_int8_target("auto", machine="x86_64")[0] == "cpu"
    assert resolve_int8_target("auto", machine="aarch64")[0] == "tensorrt"
    target, reason = resolve_int8_target("auto", engine=True, machine="x86_64")
    assert target == "tensorrt" and "engine" in reason
    assert resolve_int8_target("cpu", engine=True) == ("cpu", "chosen with --int8-target")
    options = PrecisionOptions("int8", "fashion-mnist", engine=True).check()
    assert options.int8_target == "tensorrt" and options.tensorrt_compatible


@pytest.mark.parametrize("kw, message", [(dict(check_size=0), "`check_size` 0"),
                                         (dict(max_fallback=-1), "`max_fallback` -1")])
def test_bad_options_are_refused(kw, message):
    with pytest.raises(SubtuneError, match=message):
        PrecisionOptions("int8", "fashion-mnist", **kw).check()


def test_mixed_resnet18_base_output_with_four_tasks_equals_the_base_only_graph(resnet18_graphs):
    """The guard of test_models.py, for a mixed graph: shared layers in fp32 before and after the merges."""
    data = CalibrationSet(images(16, size=32, seed=3))
    four = quantize_int8(resnet18_graphs["four_tasks"], data)
    alone = quantize_int8(resnet18_graphs["base_only"], data)
    base_units = [u.label for u in quantised_units(four.model) if u.base_path and u.label.startswith("base.")]
    labels = base_units[:2] + base_units[len(base_units) // 2:][:3]  # the stem end and the middle (past merges)
    mixed, _, matched = fall_back_layers(resnet18_graphs["four_tasks"], four.model, four.base_only, labels)
    alone_mixed, _, matched_alone = fall_back_layers(resnet18_graphs["base_only"], alone.model, alone.base_only, labels)
    assert matched == matched_alone == sorted(labels)
    x = images(6, size=32, seed=4)
    np.testing.assert_array_equal(_run(mixed, x, ["base"])[0], _run(alone_mixed, x, ["base"])[0])
