"""The Python API (subtune.compile): the README's example runs as written; the outputs are
verified, atomic and say what they are; bad requests are refused before any work."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

import subtune
from subtune.errors import SubtuneError, VerificationError
from subtune.formats import make_base
from subtune.synthetic import synthetic_task

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- python-api-example"


def readme_example(text: str) -> str:
    """The first ```python block after the marker comment."""
    start = text.find(MARKER)
    assert start >= 0, f"README.md lacks the Python API example (a ```python block after '{MARKER} ...-->')"
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block, "no ```python block after the Python API marker in README.md"
    return block.group(1)


def test_readme_python_example_runs_as_written(tmp_path):
    code = readme_example(README.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines == ["['model.onnx', 'model.report.json']", "True ['base', 'dogs']", "(4, 10) (4, 10)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.report.json"]


def test_importing_subtune_stays_cheap():
    probe = textwrap.dedent("""
        import sys, subtune
        assert callable(subtune.__getattr__)
        print(sorted({m.split('.')[0] for m in sys.modules} & {"torch", "onnx", "onnx_ir", "onnxruntime", "numpy"}))
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


@pytest.fixture(scope="module")
def tiny():
    base = make_base("subtune:tiny_resnet", seed=0)
    _, bb = base.build()
    return base, [synthetic_task(base, "a", [3, 4], seed=1, backbone=bb),
                  synthetic_task(base, "b", [8], seed=2, backbone=bb)]


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_paths_and_objects_compile_alike_and_unverified_says_so(tmp_path, tiny):
    from subtune.formats import save_base, save_task

    base, tasks = tiny
    save_base(tmp_path / "base.pt", base)
    save_task(tmp_path / "b.pt", tasks[1])
    from_files = subtune.compile(str(tmp_path / "base.pt"), [tmp_path / "b.pt"], tmp_path / "files.onnx",
                                 image_size=16, verify=False, report=False)
    in_memory = subtune.compile(base, tasks[1:], tmp_path / "memory.onnx", image_size=16, verify=False)
    assert from_files.report_path is None and from_files.files == [tmp_path / "files.onnx"]
    assert (tmp_path / "files.onnx").read_bytes() == (tmp_path / "memory.onnx").read_bytes()
    assert from_files.report["base"] == str(tmp_path / "base.pt") and in_memory.report["tasks"] == ["<in memory: b>"]
    assert not in_memory.verified and "verification" not in in_memory.report
    meta = _meta(in_memory.output)
    assert meta["subtune.verified"] == "false" and "subtune.verification" not in meta


def test_verified_graph_records_it_and_names_the_batch(tmp_path, tiny):
    base, tasks = tiny
    result = subtune.compile(base, tasks, tmp_path / "m.onnx", image_size=16, verify_batches=(1, 3))
    assert result.verified and result.files == [tmp_path / "m.onnx", tmp_path / "m.report.json"]
    meta = _meta(result.output)
    assert meta["subtune.verified"] == "true"
    ver = json.loads(meta["subtune.verification"])
    assert ver["batches"] == [1, 3] and ver["tolerance"] == 1e-4
    assert max(c["relative_error"] for c in result.report["verification"]["checks"]) <= 1e-4
    graph = onnx.load(str(result.output)).graph
    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    assert json.loads(result.report_path.read_text())["verification"]["passed"] is True


def test_failed_verification_writes_the_report_and_no_model(tmp_path, tiny):
    """A tolerance no float arithmetic meets: ONNX Runtime and PyTorch differ in the last bits."""
    base, tasks = tiny
    with pytest.raises(VerificationError, match="verification failed") as caught:
        subtune.compile(base, tasks, tmp_path / "m.onnx", image_size=16, tolerance=1e-12, verify_batches=(1, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.report.json"]
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["output"] is None and "verification failed" in report["error"]
    checks = report["verification"]["checks"]
    assert report["verification"]["passed"] is False and {c["output"] for c in checks} == {"base", "a", "b"}
    assert any(not c["passed"] for c in checks) and {c["batch"] for c in checks} == {1, 3}
    assert caught.value.report_path == tmp_path / "m.report.json"


@pytest.mark.parametrize("report", ["m.onnx", "./m.onnx"])
def test_report_naming_the_output_is_refused(tmp_path, tiny, report, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base, tasks = tiny
    with pytest.raises(SubtuneError, match="same file as the model output"):
        subtune.compile(base, tasks, "m.onnx", report=report)
    assert list(tmp_path.iterdir()) == []


def test_report_naming_the_weights_file_is_refused(tmp_path, tiny):
    base, tasks = tiny
    with pytest.raises(SubtuneError, match="same file as the model output"):
        subtune.compile(base, tasks, tmp_path / "m.onnx", report=tmp_path / "m.onnx.data")


@pytest.mark.parametrize("kwargs,match", [
    ({"output": "m.txt"}, "expected a .onnx file"),
    ({"verify_batches": (0, 2)}, "positive batch sizes"),
    ({"image_size": (16, 16, 3)}, "H or \\(H, W\\)"),
    ({"prune": 1.5}, "strictly between 0 and 1"),
    ({"output": "m.plan", "batch_range": (8, 1, 4)}, "1 <= MIN <= OPT <= MAX"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, tiny, kwargs, match, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base, tasks = tiny
    kwargs = {"output": "m.onnx", **kwargs}
    with pytest.raises(SubtuneError, match=match):
        subtune.compile(base, tasks, **kwargs)
    assert list(tmp_path.iterdir()) == []
