"""`subtune compile --precision ...`: bad input gets one line, exit 1, and no output file, before
any slow step; the summary prints the comparison with fp32."""

import pytest

from subtune.cli import main
from subtune.commands.compile import _print_precision


@pytest.mark.parametrize("flags, message", [
    (["--precision", "int8"], "--precision int8 needs --calibration DATA"),
    (["--calibration", "fashion-mnist"], "--calibration applies to --precision int8 or fp16"),
    (["--precision", "int8", "--calibration", "fashion-mnist", "--calibration-size", "0"], "--calibration-size 0"),
    (["--precision", "int8", "--calibration", "fashion-mnist", "--min-agreement", "95"], "fractions between 0 and 1"),
    (["--precision", "int8", "--calibration", "nosuch:/data"], "expected fashion-mnist, imagefolder:DIR"),
    (["--precision", "fp16", "--calibration", "imagefolder:/nonexistent/subtune"], "/nonexistent/subtune"),
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
