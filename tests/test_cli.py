"""The command line: bad input gets one line, exit 1, no traceback, no output file."""

import os
import subprocess
import sys

import pytest
import torch

from subtune.cli import main
from subtune.formats import load_task, save_task


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compile_writes_onnx_report_and_prints_errors(tmp_path, capsys, resnet18_files):
    d = resnet18_files
    out = tmp_path / "m.onnx"
    code, stdout, _ = _run(capsys, "compile", str(d / "base.pt"), str(d / "early.pt"), str(d / "siam.pt"),
                           "-o", str(out), "--image-size", "32", "--verify-batches", "1,3")
    assert code == 0 and out.is_file() and (tmp_path / "m.report.json").is_file()
    assert "early" in stdout and "max abs err" in stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def _task_variant(d, tmp_path, name, mutate):
    task = load_task(d / "early.pt")
    mutate(task)
    path = tmp_path / f"{name}.pt"
    save_task(path, task)
    return path


BAD_INPUTS = {
    "missing": (lambda d, t: t / "nope.pt", "not found"),
    "truncated": (lambda d, t: _truncate(d / "early.pt", t / "trunc.pt"), "truncated or not a PyTorch file"),
    "text file": (lambda d, t: _write(t / "notes.pt", b"hello"), "task file"),
    "base given as task": (lambda d, t: d / "base.pt", "expected a task file"),
    "pickled module": (lambda d, t: _save(t / "mod.pt", {"m": torch.nn.Linear(1, 1)}), "pickled Python objects"),
    "other base": (lambda d, t: _task_variant(d, t, "fp", lambda k: setattr(k, "base_fingerprint", "f" * 64)),
                   "another base"),
    "out of range": (lambda d, t: _task_variant(d, t, "oor", lambda k: setattr(k, "blocks", [9, 10])), "out of range"),
    "not consecutive": (lambda d, t: _task_variant(d, t, "nc", lambda k: setattr(k, "blocks", [2, 4])),
                        "not consecutive"),
    "block misfit": (lambda d, t: _task_variant(d, t, "bm", lambda k: k.block_state["2"].__setitem__(
        "conv1.weight", torch.zeros(3, 3, 3, 3))), "has shape"),
    "head misfit": (lambda d, t: _task_variant(d, t, "hm", lambda k: k.head.__setitem__("weight", torch.zeros(10, 9))),
                    "head takes 9 inputs"),
    "duplicate names": (lambda d, t: d / "early.pt", "two tasks are named"),
    "tampered tensors": (lambda d, t: _tamper(d / "early.pt", t / "tampered.pt"), "corrupted or edited"),
    "preprocess not a dict": (lambda d, t: _task_variant(d, t, "pp", lambda k: k.meta.__setitem__("preprocess", [64])),
                              "meta['preprocess'] is a list"),
    "preprocess bad std": (lambda d, t: _task_variant(d, t, "ps", lambda k: k.meta.__setitem__("preprocess", {
        "image_size": [32, 32], "mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]})), "not all positive"),
}


def _tamper(src, dst):
    """Edit a tensor without updating the file's hash, as a bit flip or a hand edit would."""
    data = torch.load(src, weights_only=True)
    data["head"]["bias"] = data["head"]["bias"] + 1
    torch.save(data, dst)
    return dst


def _truncate(src, dst):
    dst.write_bytes(src.read_bytes()[:5000])
    return dst


def _write(path, data):
    path.write_bytes(data)
    return path


def _save(path, obj):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, resnet18_files, case):
    make, message = BAD_INPUTS[case]
    d = resnet18_files
    bad = make(d, tmp_path)
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    code, _, err = _run(capsys, "compile", str(d / "base.pt"), str(d / "early.pt"), str(bad), "-o", str(out),
                        "--image-size", "32", "--no-verify")
    assert code == 1
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(out.parent.iterdir()) == []


def test_unwritable_output_fails_before_any_work(tmp_path, capsys, resnet18_files):
    code, _, err = _run(capsys, "compile", str(resnet18_files / "base.pt"), "-o", str(tmp_path / "no" / "m.onnx"))
    assert code == 1 and "does not exist" in err


def test_engine_without_tensorrt_names_the_cpu_path(tmp_path, capsys, resnet18_files):
    from subtune.runtimes.tensorrt import tensorrt_unavailable_reason

    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present: the engine path is tested in tests/runtimes")
    out = tmp_path / "engine.plan"
    code, _, err = _run(capsys, "compile", str(resnet18_files / "base.pt"), "-o", str(out))
    assert code == 1 and "-o model.onnx" in err and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_subprocess_exit_code_and_debug_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "subtune.cli", "compile", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m.onnx")]
    quiet = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr and "not found" in quiet.stderr
    loud = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=env)
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def test_base_command_and_synthetic_task(tmp_path, capsys):
    code, out, _ = _run(capsys, "base", "--arch", "torchvision:resnet18", "--num-classes", "5", "-o", str(tmp_path / "b.pt"))
    assert code == 0 and "random weights (seed 0" in out
    code, _, _ = _run(capsys, "synthetic-task", str(tmp_path / "b.pt"), "--blocks", "layer3", "--name", "t",
                      "-o", str(tmp_path / "t.pt"))
    assert code == 0 and load_task(tmp_path / "t.pt").blocks == [5, 6]
    code, _, err = _run(capsys, "base", "--arch", "torchvision:resnet5", "-o", str(tmp_path / "x.pt"))
    assert code == 1 and "unknown architecture" in err and not (tmp_path / "x.pt").exists()


def test_parsing_imports_nothing_heavy():
    code = ("import sys; from subtune.cli import build_parser; build_parser(['compile'])"
            ".parse_args(['compile', 'b.pt', '-o', 'm.onnx']); "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'timm') if m in sys.modules]; "
            "print(heavy); assert not heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_report_naming_the_output_is_refused(tmp_path, capsys, resnet18_files):
    d = resnet18_files
    out = tmp_path / "m.onnx"
    code, _, err = _run(capsys, "compile", str(d / "base.pt"), str(d / "early.pt"), "-o", str(out),
                        "--report", str(out))
    assert code == 1 and "is the same file as the model output" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_no_verify_and_no_tensorrt_check_say_so(tmp_path, capsys, resnet18_files):
    import json

    d = resnet18_files
    out = tmp_path / "m.onnx"
    code, stdout, _ = _run(capsys, "compile", str(d / "base.pt"), str(d / "last.pt"), "-o", str(out),
                           "--image-size", "32", "--no-verify", "--no-tensorrt-check")
    assert code == 0 and "subtune.verified=false" in stdout
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert "verification" not in report and "tensorrt_compatible" not in report
    assert list(report["seconds"]) == ["validate", "schedule", "lower", "export", "clean up", "record verification"]


def test_task_files_without_a_hash_still_load(tmp_path, resnet18_files):
    """Files written before tasks carried tensors_sha256 load as they did."""
    data = torch.load(resnet18_files / "early.pt", weights_only=True)
    assert "tensors_sha256" in data
    del data["tensors_sha256"]
    torch.save(data, tmp_path / "old.pt")
    old = load_task(tmp_path / "old.pt")
    assert torch.equal(old.head["weight"], load_task(resnet18_files / "early.pt").head["weight"])


def test_prune_report_naming_the_output_is_refused(tmp_path, capsys, resnet18_files):
    d = resnet18_files
    out = tmp_path / "p.pt"
    code, _, err = _run(capsys, "prune", str(d / "base.pt"), str(d / "early.pt"), "--ratio", "0.5",
                        "-o", str(out), "--report", str(out))
    assert code == 1 and "same file as -o" in err and list(tmp_path.iterdir()) == []


def test_failed_verification_prints_the_table_and_writes_only_the_report(tmp_path, capsys, resnet18_files):
    d = resnet18_files
    out = tmp_path / "m.onnx"
    code, stdout, err = _run(capsys, "compile", str(d / "base.pt"), str(d / "early.pt"), "-o", str(out),
                             "--image-size", "32", "--verify-batches", "1,3", "--tolerance", "1e-12")
    assert code == 1 and "verification failed" in err and len(err.strip().splitlines()) == 1
    assert "FAILED" in stdout and "no model written" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.report.json"]


# --------------------------------------------------------------------------- one convention per concept (#22 item 8)


def test_version(capsys):
    from subtune.version import __version__

    for only in (None, "compile", "bench"):
        with pytest.raises(SystemExit) as done:
            main(["--version"], only=only)
        assert done.value.code == 0
    assert capsys.readouterr().out.splitlines() == [f"subtune {__version__}", f"subtune-compile {__version__}",
                                                    f"subtune-bench {__version__}"]


def test_prune_takes_the_base_first_and_the_old_order_with_a_warning(tmp_path, capsys, resnet18_files):
    d = resnet18_files
    code, _, err = _run(capsys, "prune", str(d / "base.pt"), str(d / "early.pt"), "--ratio", "0.5",
                        "-o", str(tmp_path / "new.pt"))
    assert code == 0 and err == ""
    code, _, err = _run(capsys, "prune", str(d / "early.pt"), "--base", str(d / "base.pt"), "--ratio", "0.5",
                        "-o", str(tmp_path / "old.pt"))
    assert code == 0 and err.count("\n") == 1 and "deprecated" in err
    assert f"subtune prune {d / 'base.pt'} {d / 'early.pt'}" in err  # the new form, spelt out
    new, old = load_task(tmp_path / "new.pt"), load_task(tmp_path / "old.pt")
    assert all(torch.equal(v, old.block_state[b][k]) for b, s in new.block_state.items() for k, v in s.items())
    code, _, err = _run(capsys, "prune", str(d / "early.pt"), "--ratio", "0.5", "-o", str(tmp_path / "x.pt"))
    assert code == 1 and "expected BASE TASK" in err
    for argv in ([str(d / "base.pt"), str(d / "early.pt")], [str(d / "early.pt"), "--base", str(d / "base.pt")]):
        code, _, err = _run(capsys, "prune-sweep", *argv, "--data", "fashion-mnist", "--ratios", "2",
                            "-o", str(tmp_path / "s.json"))
        assert code == 1 and "pruning ratio 2.0" in err and ("deprecated" in err) == ("--base" in argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.pt", "new.report.json", "old.pt", "old.report.json"]


def _command_parsers():
    from subtune.cli import COMMANDS, build_parser

    return {name: build_parser([], only=name) for name in COMMANDS}


def test_image_size_means_the_input_images_size_everywhere():
    import argparse

    from subtune.commands.flag_values import IMAGE_SIZE_HELP, image_size

    having = {}
    for name, parser in _command_parsers().items():
        for action in parser._actions:
            if "--image-size" in action.option_strings:
                having[name] = action
                assert IMAGE_SIZE_HELP in action.help, (name, action.help)
                assert action.type in (None, str), name  # the text, read by image_size: H or H,W
    assert image_size("24,32") == (24, 32) and image_size("24") == (24, 24)
    assert set(having) == {"base", "compile", "train", "profile", "bench"}
    assert all(a.help != argparse.SUPPRESS for a in having.values())


def test_thread_flags_say_which_threads(tmp_path, capsys):
    import argparse

    shown = {name: [(a.option_strings, a.help) for a in parser._actions
                    if "threads" in a.dest and a.help != argparse.SUPPRESS]
             for name, parser in _command_parsers().items()}
    assert {name: [o for o, _ in flags] for name, flags in shown.items() if flags} == {
        "train": [["--torch-threads"]], "profile": [["--torch-threads"]], "select": [["--torch-threads"]],
        "bench": [["--intra-op-threads"]], "triton-repo": [["--ort-threads"]]}
    for name, flags in shown.items():
        for _, help_text in flags:
            assert "intra-op" in help_text and ("torch" in help_text or "ONNX Runtime" in help_text), name
    code = main(["bench", str(tmp_path / "absent.onnx"), "--threads", "2"])  # the old spelling still works
    err = capsys.readouterr().err
    assert code == 1 and "warning: --threads is deprecated: use --intra-op-threads" in err and "not found" in err


DOES_NOTHING = [
    (["compile", "{base}", "-o", "{out}/m.onnx", "--batch-range", "1,8,32"], "--batch-range does nothing for m.onnx"),
    (["compile", "{base}", "-o", "{out}/m.onnx", "--no-verify", "--tolerance", "1e-3"],
     "--tolerance does nothing with --no-verify"),
    (["compile", "{base}", "-o", "{out}/m.onnx", "--int8-target", "cpu"],
     "--int8-target does nothing for the default fp32 graph"),
    (["compile", "{base}", "-o", "{out}/m.onnx", "--precision", "fp16", "--max-fallback", "2"],
     "--max-fallback does nothing with --precision fp16"),
    (["compile", "{base}", "-o", "{out}/m.onnx", "--prune-norm", "l1"], "--prune-norm does nothing without --prune"),
    (["train", "{base}", "--data", "imagefolder:{out}", "--mode", "lora", "--tap-grid", "3", "-o", "{out}/t.pt"],
     "--tap-grid does nothing with --mode lora: only with --mode head2toe"),
    (["train", "{base}", "--data", "imagefolder:{out}", "--blocks", "3", "--max-blocks", "2", "-o", "{out}/t.pt"],
     "--max-blocks steer greedy selection: they apply to --blocks auto only"),
    (["train", "{base}", "--data", "imagefolder:{out}", "--blocks", "3", "--ray", "-o", "{out}/t.pt"],
     "--ray runs greedy selection's candidates as Ray tasks"),
    (["train", "{base}", "--data", "imagefolder:{out}", "--blocks", "3", "--ray-cpus-per-run", "2",
      "-o", "{out}/t.pt"], "--ray-cpus-per-run does nothing without --ray"),
    (["train", "{base}", "--data", "imagefolder:{out}", "--blocks", "3", "--test-limit", "10", "-o", "{out}/t.pt"],
     "--test-limit applies when the test split is evaluated: add --test"),
    (["profile", "{base}", "--data", "imagefolder:{out}", "--ray-gpus-per-run", "1", "-o", "{out}/p.json"],
     "--ray-gpus-per-run does nothing without --ray"),
    (["prune", "{base}", "{task}", "--ratio", "0.5", "--epochs", "3", "-o", "{out}/p.pt"],
     "--epochs does nothing without --data"),
    (["triton-repo", "{out}/engine.plan", "--ort-threads", "2", "-o", "{out}/repo"],
     "--ort-threads does nothing with the tensorrt backend"),
    (["triton-repo", "{out}/m.onnx", "--no-dynamic-batching", "--queue-delay-us", "50", "-o", "{out}/repo"],
     "--queue-delay-us does nothing with --no-dynamic-batching"),
    (["serve", "{out}", "--max-batch-size", "4"], "--max-batch-size does nothing for a repository folder"),
    (["bench", "--profile", "{out}/p.json", "{base}", "--keep-samples"], "--keep-samples does nothing with --profile"),
    (["base", "--arch", "torchvision:resnet18", "--image-size", "64", "-o", "{out}/b.pt"],
     "--image-size does nothing for torchvision:resnet18"),
]


@pytest.mark.parametrize("argv,message", DOES_NOTHING, ids=[f"{a[0]}: {m.split(':')[0]}" for a, m in DOES_NOTHING])
def test_a_flag_that_does_nothing_here_is_refused(tmp_path, capsys, resnet18_files, argv, message):
    """Refused in one line before any work (nothing is written), naming the flag, never ignored."""
    d = resnet18_files
    argv = [a.format(base=d / "base.pt", task=d / "early.pt", out=tmp_path) for a in argv]
    code, _, err = _run(capsys, *argv)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1 and "`" not in err, err
    assert list(tmp_path.iterdir()) == []
