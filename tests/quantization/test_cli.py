"""`subtune compile --precision ...`: bad input gets one line, exit 1, and no output file, before
any slow step; the summary prints the comparison with fp32."""

import pytest

from subtune.cli import main
from subtune.commands.compile import _print_precision


@pytest.mark.parametrize("flags, message", [
    (["--precision", "int8"], "--precision int8 needs --calibration DATA"),
    (["--calibration", "fashion-mnist"], "--calibration does nothing for the default fp32 graph: only with --precision int8 or fp16"),
    (["--precision", "int8", "--calibration", "fashion-mnist", "--calibration-size", "0"], "--calibration-size 0"),
    (["--precision", "int8", "--calibration", "fashion-mnist", "--min-agreement", "95"], "fractions between 0 and 1"),
    (["--precision", "int8", "--calibration", "nosuch:/data"], "expected fashion-mnist, imagefolder:DIR"),
    (["--precision", "fp16", "--calibration", "imagefolder:/nonexistent/subtune"], "/nonexistent/subtune"),
    (["--precision", "int8", "--calibration", "fashion-mnist", "--max-fallback", "-1"], "--max-fallback -1"),
    (["--precision", "int8", "--calibration", "fashion-mnist", "--check-size", "0"], "--check-size 0"),
])
def test_bad_precision_input_is_one_line_and_leaves_no_file(tmp_path, capsys, resnet18_files, flags, message):
    out = tmp_path / "m.onnx"
    code = main(["compile", str(resnet18_files / "base.pt"), str(resnet18_files / "early.pt"), "-o", str(out),
                 "--image-size", "32", *flags])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_summary_prints_agreement_accuracy_and_the_pinned_base(capsys):
    _print_precision({"precision": "int8", "verification": {
        "images": "fashion-mnist (64 training images, seed 0)", "base_output_vs_base_only": {"max_abs_difference": 0.0},
        "outputs": [{"output": "base", "agreement": 0.984, "accuracy": None, "accuracy_fp32": None,
                     "relative_error": 0.031},
                    {"output": "shoes", "agreement": 0.969, "accuracy": 0.875, "accuracy_fp32": 0.89,
                     "relative_error": 0.05}]}})
    out = capsys.readouterr().out
    assert "int8 vs the fp32 graph on fashion-mnist" in out and "98.4%" in out and "89.0% -> 87.5%" in out
    assert "max |difference| 0" in out


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from subtune.formats import save_base, save_task
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    d = tmp_path_factory.mktemp("tiny")
    base = make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)
    save_base(d / "base.pt", base)
    save_task(d / "t.pt", synthetic_task(base, "t", [3, 4], seed=1))
    return d


def _compile_int8(files, out, *flags):
    from pathlib import Path as P

    if not P("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST (Debian package dataset-fashion-mnist) not installed")
    code = main(["compile", str(files / "base.pt"), str(files / "t.pt"), "-o", str(out),
                 "--image-size", "32", "--precision", "int8", "--calibration", "fashion-mnist",
                 "--calibration-size", "16", "--check-size", "40", "--min-agreement", "0.6", "--allow-slower", *flags])
    assert code == 0 and out.is_file()  # --allow-slower: a 32 px toy graph's int8 speed is whatever it is
    import json

    return json.loads(out.with_suffix(".report.json").read_text())["precision"]


def test_int8_compile_checks_on_held_out_images_and_skips_sensitivity_when_plain_int8_passes(tmp_path, tiny_files,
                                                                                            capsys):
    """The whole path: --int8-target auto, held-out checks (Fashion-MNIST's test split), the pinned
    base; plain int8 meets the targets, so no layer sensitivity, no PNG, and the summary says so."""
    out = tmp_path / "m.onnx"
    report = _compile_int8(tiny_files, out)
    assert report["scheme"]["target"] in ("cpu", "tensorrt") and report["scheme"]["target_reason"].startswith("auto")
    ver = report["verification"]
    assert ver["held_out"] and "test split" in ver["images"] and ver["check_images"] == 40
    assert ver["base_output_vs_base_only"]["max_abs_difference"] == 0.0
    assert ver["outputs_computed_by_quantize"] == ["fp32", "int8"]  # one run of each graph on the check images
    mixed = report["mixed"]
    assert mixed["plain"]["failing"] == [] and mixed["sensitivity"]["skipped"].startswith("plain int8 meets")
    assert mixed["fallback"]["layers"] == 0 and mixed["fallback"]["evaluations"] == 1
    assert mixed["cost"]["search_seconds"] == 0 and mixed["cost"]["sessions"] == 0
    assert not out.with_suffix(".sensitivity.png").exists()
    assert "fallback search: none (plain int8 meets every target" in capsys.readouterr().out


def test_int8_compile_with_sensitivity_writes_the_table_and_what_it_cost(tmp_path, tiny_files, capsys):
    out = tmp_path / "m.onnx"
    mixed = _compile_int8(tiny_files, out, "--sensitivity")["mixed"]
    layers = mixed["sensitivity"]["layers"]
    assert len(layers) == mixed["units"] > 0 and mixed["sensitivity"]["method"] == "one graph"
    assert [x["max_error"] for x in layers] == sorted((x["max_error"] for x in layers), reverse=True)
    assert mixed["fallback"]["passed"]
    assert mixed["cost"]["sensitivity_seconds"] > 0 and mixed["cost"]["sessions"] >= 1
    assert out.with_suffix(".sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert "fallback search: " in capsys.readouterr().out


def test_sensitivity_flag_needs_int8(tmp_path, capsys, tiny_files):
    out = tmp_path / "m.onnx"
    code = main(["compile", str(tiny_files / "base.pt"), str(tiny_files / "t.pt"), "-o", str(out), "--precision",
                 "fp16", "--sensitivity"])
    err = capsys.readouterr().err
    assert code == 1 and "--sensitivity does nothing with --precision fp16" in err and err.count("\n") == 1
    assert not out.exists()


def test_precision_summary_prints_the_check_the_fallbacks_and_sensitivity():
    from subtune.quantization.plot import precision_summary

    layer = {"node": "n1", "op_type": "Conv", "label": "base.stem.weight", "base_path": True, "max_error": 0.3,
             "relative_logit_error": {"base": 0.3, "shoes": 0.2}}
    lines = precision_summary({"precision": "int8", "scheme": {"target": "cpu", "target_reason": "auto: x86"},
                               "mixed": {"units": 12, "sensitivity": {"layers": [layer]},
                                         "fallback": {"layers": 1, "labels": ["base.stem.weight"], "nodes": ["n1"]}},
                               "verification": {
        "images": "fashion-mnist test split (64 images, seed 0)", "held_out": True,
        "base_output_vs_base_only": {"max_abs_difference": 0.0},
        "latency": {"runtime": "ONNX Runtime CPU", "batch_1": {"fp32_ms": 2.0, "reduced_ms": 1.5, "ratio": 0.75}},
        "outputs": [{"output": "base", "agreement": 0.9, "confident_agreement": 0.984, "accuracy": None,
                     "top5_overlap": 0.9, "relative_error": 0.031},
                    {"output": "shoes", "agreement": 0.969, "accuracy": 0.875, "accuracy_fp32": 0.89,
                     "relative_error": 0.05}]}})
    text = "\n".join(lines)
    assert "int8 form: cpu (auto: x86)" in text and "98.4%" in text and "89.0% -> 87.5%" in text
    assert "max |difference| 0" in text and "layers kept in fp32: 1 of 12 quantised (base.stem.weight)" in text
    assert "(0.75x)" in text and "base.stem.weight" in lines[-1] and lines[-1].rstrip().endswith("yes")


def _latency(*ratios, flags=("avx2",)):
    return {"runtime": "ONNX Runtime CPU", "cpu_flags": list(flags), "load_average": [0.5, 0.5, 0.5],
            **{f"batch_{b}": {"fp32_ms": 1.0, "reduced_ms": r, "ratio": r} for b, r in zip((1, 8), ratios)}}


def test_an_int8_graph_for_onnxruntime_cpu_that_is_slower_than_fp32_everywhere_is_refused_with_the_fix(caplog):
    from subtune.errors import VerificationError
    from subtune.quantization import PrecisionOptions, check_faster

    cpu = PrecisionOptions("int8", "fashion-mnist", int8_target="cpu").check()
    with pytest.raises(VerificationError) as e:
        check_faster(_latency(1.14, 1.02), cpu)
    msg = str(e.value)
    assert "1.14x / 1.02x the fp32 graph's time at batch 1 / 8" in msg and "CPU without VNNI/AMX" in msg
    assert "drop --precision" in msg and "--allow-slower" in msg and "\n" not in msg
    check_faster(_latency(0.8, 1.1), cpu)  # faster at one batch size: kept
    with caplog.at_level("WARNING"):
        check_faster(_latency(1.2, 1.3), PrecisionOptions("int8", "fashion-mnist", int8_target="cpu",
                                                          allow_slower=True).check())
    assert "kept (--allow-slower)" in caplog.text
    # forms built for other runtimes (TensorRT's QDQ form, fp16) are not judged by ONNX Runtime CPU: a warning
    for other in (PrecisionOptions("int8", "fashion-mnist", int8_target="tensorrt").check(),
                  PrecisionOptions("fp16").check()):
        check_faster(_latency(2.0, 2.0), other)
