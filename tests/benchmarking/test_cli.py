"""`subtune-bench` end to end: model mode in-process (ONNX Runtime with per-session threads),
--compare through ONNX Runtime in a fresh process (it sizes the process-wide thread pool)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from subtune.benchmarking.overhead import identity_onnx
from subtune.cli import build_parser, main
from subtune.benchmarking.harness import protocol_from_flags as _protocol

QUICK = ["--warmup", "1", "--iters", "3", "--repeats", "2"]


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "identity.onnx"
    path.write_bytes(identity_onnx((1, 3, 4, 4)))
    return path


def test_model_mode_prints_a_table_and_writes_json(model, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main(["bench", str(model), "--batch", "1,3", "--intra-op-threads", "1", "--json", str(out), *QUICK]) == 0
    table = capsys.readouterr().out
    assert "median ms" in table and "images/s" in table
    data = json.loads(out.read_text())
    assert [t["batch"] for t in data["timings"]] == [1, 3]
    assert data["protocol"] == {"warmup": 1, "iters": 3, "repeats": 2}
    assert data["runtime"]["intra_op_threads"] == 1 and data["machine"]["threads"] == 1
    assert data["machine"]["cpu"] and data["machine"]["libraries"]["onnxruntime"]
    assert all(len(t["repeat_medians_ms"]) == 2 and "samples_ms" not in t for t in data["timings"])


@pytest.mark.parametrize("argv, message", [
    (["--batch", "1,x"], "--batch expects comma-separated positive integers"),
    (["--batch", "0"], "--batch expects positive integers"),
    (["--iters", "0"], "timing protocol needs"),
    (["--budget-ms", "2"], "--budget-ms needs --profile"),
    (["--plot", "x.png"], "--plot applies to --compare"),
    (["--task-counts", "1"], "--task-counts applies to --compare"),
    (["--image-size", "32"], "--image-size applies to --compare"),
    (["--cuda-graph"], "--cuda-graph applies to TensorRT engines"),
    (["--runtime", "torch"], "--runtime applies to --compare"),
])
def test_bad_arguments_are_one_line_errors(model, capsys, argv, message):
    assert main(["bench", str(model), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_compare_options_are_checked_before_any_work(tmp_path, capsys):
    assert main(["bench", "--compare", "b.pt", "t.pt", "--runtime", "torch", "--provider", "cuda"]) == 1
    assert "--provider applies to --runtime onnxruntime" in capsys.readouterr().err
    assert main(["bench", "--profile", "p.json", "b.pt", "--batch", "1,8"]) == 1
    assert "one batch size" in capsys.readouterr().err
    assert main(["bench", "--compare", "b.pt", "t.pt", "--runtime", "tensorrt"]) == 1
    err = capsys.readouterr().err  # here TensorRT is missing; where it is not, b.pt is
    assert "--runtime tensorrt: TensorRT" in err or "b.pt not found" in err


def test_bad_files_are_one_line_errors(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "absent.onnx")]) == 1
    assert "not found" in capsys.readouterr().err
    base = tmp_path / "b.pt"
    base.write_bytes(b"x")
    assert main(["bench", str(base)]) == 1
    assert "--compare" in capsys.readouterr().err
    assert main(["bench", "--compare", str(base)]) == 1
    assert "at least one task" in capsys.readouterr().err


def test_a_failed_run_leaves_no_output(tmp_path, capsys):
    broken, out = tmp_path / "broken.onnx", tmp_path / "result.json"
    broken.write_bytes(b"not onnx")
    assert main(["bench", str(broken), "--json", str(out), *QUICK]) == 1
    assert "could not load" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [broken]  # neither the JSON nor a temporary file


def test_paper_protocol_is_one_flag_away_and_explicit_flags_win():
    parse = lambda *a: build_parser(["bench", "m.onnx", *a]).parse_args(["bench", "m.onnx", *a])  # noqa: E731
    assert _protocol(parse()).__dict__ == {"warmup": 10, "iters": 30, "repeats": 5}
    assert _protocol(parse("--paper-protocol")).__dict__ == {"warmup": 300, "iters": 300, "repeats": 10}
    assert _protocol(parse("--paper-protocol", "--iters", "50")).iters == 50


def test_compare_through_onnxruntime_end_to_end(tmp_path, tiny_base, tiny_tasks):
    from subtune.formats import save_base, save_task

    save_base(tmp_path / "b.pt", tiny_base)
    save_task(tmp_path / "t1.pt", tiny_tasks[0])  # one task keeps the exports (the slow part) to six
    out, png = tmp_path / "compare.json", tmp_path / "compare.png"
    code = textwrap.dedent(f"""
        import sys
        from subtune.cli import main
        sys.exit(main(["bench", "--compare", "b.pt", "t1.pt", "--batch", "1,2",
                       "--intra-op-threads", "1", "--json", {str(out)!r}, "--plot", {str(png)!r},
                       "--warmup", "1", "--iters", "3", "--repeats", "2"]))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "(d) compiled multi-task graph" in done.stdout and "cost model" in done.stdout
    assert "task selection: the task-select graph (e) per request mix" in done.stdout
    data = json.loads(out.read_text())
    assert data["runtime"]["runtime"] == "onnxruntime" and data["runtime"]["intra_op_threads"] == "shared pool of 1"
    rows = {(r["key"], r["batch"]): r for r in data["rows"]}
    selected = [f"selected/k=1/{mix}" for mix in ("all", "one-random", "one-fixed", "none")]
    assert set(rows) == {(k, b) for k in ("base", "naive/k=1", "split/k=1", "compiled/k=1", *selected) for b in (1, 2)}
    assert {rows[k, 1]["mix"] for k in selected} == {"all", "one-random", "one-fixed", "none"}
    assert set(data["agreement"]) >= set(selected)  # checked against the plainest deployment, NaN fills included
    # bytes of weights as exported (BatchNorm folded into the convolutions by the exporter)
    base_bytes = rows["base", 1]["weight_bytes"]
    assert rows["naive/k=1", 1]["weight_bytes"] == pytest.approx(2 * base_bytes, rel=0.02)
    assert base_bytes < rows["compiled/k=1", 1]["weight_bytes"] < rows["split/k=1", 1]["weight_bytes"]
    assert max(data["agreement"].values()) < 1e-4
    assert len(data["predictions"]) == 2
    assert png.read_bytes()[:4] == b"\x89PNG"
