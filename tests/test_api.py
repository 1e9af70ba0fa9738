"""The Python API (subtune.compile): docs/python-api.md's examples run as written; the outputs are
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
from subtune.models import make_base
from subtune.synthetic import synthetic_task
from subtune.training.options import DataOptions, Head2Toe, Linear, LoRA, SubTuning, TrainingOptions

PYTHON_API_DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
MARKER = "<!-- python-api-example"


def doc_example(text: str, marker: str = MARKER) -> str:
    """The first ```python block after the marker comment."""
    start = text.find(marker)
    assert start >= 0, f"docs/python-api.md lacks the Python API example (a ```python block after '{marker} ...-->')"
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block, f"no ```python block after the marker '{marker}' in docs/python-api.md"
    return block.group(1)


def test_docs_python_example_runs_as_written(tmp_path):
    code = doc_example(PYTHON_API_DOC.read_text())
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
    ({"output": "m.onnx", "batch_range": (1, 8, 32)}, "`batch_range` sets a TensorRT engine's batch profile"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, tiny, kwargs, match, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base, tasks = tiny
    kwargs = {"output": "m.onnx", **kwargs}
    with pytest.raises(SubtuneError, match=match):
        subtune.compile(base, tasks, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_compile_leaves_the_callers_options_as_they_were(tmp_path, tiny):
    """#22 item 3: compile resolves `int8_target` auto (and the engine flag) into a new object; the
    caller's PrecisionOptions and PruneOptions come back as they went in, whether the compile
    fails early (here: calibration data that does not exist) or on the engine path."""
    import copy

    from subtune.pruning.plan import PruneOptions
    from subtune.quantization import PrecisionOptions

    base, tasks = tiny
    precision = PrecisionOptions("int8", f"imagefolder:{tmp_path / 'absent'}")
    prune = PruneOptions(0.5)
    before = (copy.deepcopy(precision), copy.deepcopy(prune))
    for output in ("m.onnx", "m.plan"):
        with pytest.raises(SubtuneError):
            subtune.compile(base, tasks, tmp_path / output, image_size=16, precision=precision, prune=prune)
        assert (precision, prune) == before, output
    resolved = precision.check(engine=True)
    assert resolved is not precision and (resolved.int8_target, resolved.engine) == ("tensorrt", True)
    assert (precision.int8_target, precision.engine, precision.int8_target_reason) == ("auto", False, "")
    assert list(tmp_path.iterdir()) == []


def test_int8_in_cpu_form_for_an_engine_is_refused_before_any_work(tmp_path, tiny, capsys, monkeypatch):
    """#22 item 3: TensorRT refuses the cpu QDQ form, so `-o x.plan --int8-target cpu` is refused
    up front (before TensorRT is even looked for), not inside the engine build."""
    from subtune.cli import main
    from subtune.formats import save_base
    from subtune.quantization import PrecisionOptions

    base, tasks = tiny
    checked = []
    import subtune.runtimes.tensorrt as trt

    real = trt.tensorrt_unavailable_reason
    monkeypatch.setattr(trt, "tensorrt_unavailable_reason", lambda: checked.append(1) or real())
    with pytest.raises(SubtuneError, match="`int8_target` cpu is ONNX Runtime's x86 form") as caught:
        subtune.compile(base, tasks, tmp_path / "m.plan", precision=PrecisionOptions("int8", "fashion-mnist",
                                                                                      int8_target="cpu"))
    assert "--" not in str(caught.value) and checked == []
    save_base(tmp_path / "base.pt", base)
    code = main(["compile", str(tmp_path / "base.pt"), "-o", str(tmp_path / "m.plan"), "--precision", "int8",
                 "--calibration", "fashion-mnist", "--int8-target", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "--int8-target cpu is ONNX Runtime's x86 form" in err and "`" not in err
    assert len(err.strip().splitlines()) == 1 and checked == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.pt"]


def test_compile_result_keeps_the_compiler_state_only_when_asked(tmp_path, tiny, monkeypatch):
    """#22 item 7: the Plan (onnx-ir graph, models: gigabytes for a large model) is released when
    compile returns unless keep_plan=True; the result's report still says what the graph is."""
    import gc
    import weakref

    import subtune.compiler.pipeline as pipeline

    plans = []
    real = pipeline.compile_plan
    monkeypatch.setattr(pipeline, "compile_plan", lambda plan, options: plans.append(weakref.ref(plan))
                        or real(plan, options))
    base, tasks = tiny
    result = subtune.compile(base, tasks, tmp_path / "m.onnx", image_size=16, verify=False, report=False)
    gc.collect()
    assert result.plan is None and len(plans) == 1 and plans[0]() is None
    assert result.outputs == ["base", "a", "b"] and result.input_size == (16, 16)
    kept = subtune.compile(base, tasks, tmp_path / "k.onnx", image_size=16, verify=False, report=False,
                           keep_plan=True)
    assert kept.plan is plans[1]() and kept.plan.output_names == ["base", "a", "b"] and kept.plan.onnx is not None


# --------------------------------------------------------------------------- the other verbs
# train, profile, prune, prune_sweep, select, benchmark, triton_repo: each is what its command runs. Tiny
# on purpose: subtune:tiny_resnet at 16 px on a nine-image-per-class colour folder.

TRAIN_EXAMPLE = "<!-- python-api-train-example"
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
QUICK = dict(data_options=DataOptions(image_size=16), training=TrainingOptions(epochs=2, batch_size=8))


def _write_image(path: Path, colour, seed: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    px = np.clip(np.array(colour)[None, None] + rng.normal(0, 30, (12, 12, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(px).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """root/<split>/<colour>/<i>.png: 6 train, 3 val, 3 test images per class."""
    root, seed = tmp_path_factory.mktemp("colours"), 0
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                seed += 1
                _write_image(root / split / name / f"{i}.png", colour, seed)
    return root


@pytest.fixture(scope="module")
def tiny_base():
    return make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base, folder):
    """One task trained through the API to files (blocks 7-8), shared by the checks below."""
    out = tmp_path_factory.mktemp("trained") / "colours.pt"
    return subtune.train(tiny_base, f"imagefolder:{folder}", out, method=SubTuning("layer4"),
                         data_options=DataOptions(image_size=16, test=True), training=QUICK["training"])


def test_train_writes_the_task_and_report_and_returns_the_same_task(trained):
    from subtune.formats import load_task

    assert trained.files == [trained.output, trained.output.with_suffix(".train.json")]
    on_disk = load_task(trained.output)
    assert on_disk.blocks == trained.task.blocks == [7, 8] and on_disk.classes == ["blue", "green", "red"]
    assert all(torch_equal(on_disk.head[k], v) for k, v in trained.task.head.items())
    report = json.loads(trained.report_path.read_text())
    assert report == json.loads(json.dumps(trained.report)) and report["blocks"] == [7, 8]
    assert report["val_accuracy"] == trained.val_accuracy == on_disk.meta["val_accuracy"]
    assert trained.test_accuracy is not None and report["data"]["train"]["images"] == 18


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_train_in_memory_from_loaded_splits_logs_and_compiles(tmp_path, tiny_base, folder, caplog, capsys):
    """Loaded datasets in, a task in memory out (no output: nothing written), straight into
    compile; the trainer's note goes to the "subtune" logger, and nothing is printed."""
    import logging

    from subtune.training.data import load_dataset

    kw = dict(image_size=16, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    splits = [load_dataset(f"imagefolder:{folder}", s, **kw) for s in ("train", "val")]
    lines = []
    with caplog.at_level(logging.WARNING, logger="subtune"):
        result = subtune.train(tiny_base, splits, method=SubTuning([8]),
                               training=TrainingOptions(epochs=1, batch_size=8, augment="flip"), on_progress=lines.append)
    assert result.output is None and result.files == [] and result.report["output"] is None
    assert any("augmentation 'flip'" in r.getMessage() for r in caplog.records)
    assert lines and lines[0].startswith("data ") and capsys.readouterr() == ("", "")
    assert result.task.blocks == [8] and result.task.name == "task" and not result.report["cached"]
    compiled = subtune.compile(tiny_base, [result.task], tmp_path / "m.onnx", image_size=16, verify_batches=(1, 2))
    assert compiled.verified and compiled.outputs == ["base", "task"]


@pytest.mark.parametrize("kwargs,match", [
    ({"method": SubTuning(None)}, "`blocks` is required"),
    ({"method": SubTuning("7-8"), "report": "t.pt"}, "`report` t.pt is the same file as `output`"),
    ({"method": SubTuning("7-9")}, "out of range"),
    ({"method": SubTuning([object()])}, "`blocks`: expected"),
    ({"method": SubTuning("7-8", max_blocks=2)}, "apply to `blocks` auto only"),
    ({"method": SubTuning("auto", max_blocks=0)}, "`max_blocks` must be at least 1"),
    ({"method": LoRA(rank=0)}, "`rank` must be at least 1"),
    ({"method": LoRA(blocks="auto")}, "`blocks` auto .* is SubTuning's"),
    ({"method": Head2Toe(tap_grid=0)}, "`tap_grid` must be at least 1"),
    ({"method": Head2Toe(feature_budget="many")}, "`feature_budget` 'many'"),
    ({"method": Linear}, "found the class Linear: call it"),
    ({"method": "subtune"}, "`method`: expected SubTuning"),
    ({"method": Linear(), "ray": "local"}, "`ray` .* SubTuning with `blocks` auto only"),
    ({"method": Linear(), "name": "9 lives"}, "`name`"),
    ({"method": SubTuning("8"), "data_options": DataOptions(test_limit=5)}, "`test_limit` applies"),
    ({"method": SubTuning("8"), "data_options": DataOptions(image_size=4)}, "`image_size`"),
    ({"method": SubTuning("8"), "training": TrainingOptions(lr=0)}, "`lr` must be positive"),
    ({"method": SubTuning("8"), "training": TrainingOptions(augment="mixup")}, "`augment` 'mixup'"),
    ({"method": SubTuning("8"), "training": dict(epochs=1)}, "`training`: expected TrainingOptions"),
    ({"method": SubTuning("8"), "threads": 0}, "`threads` must be at least 1"),
])
def test_train_refuses_bad_requests_naming_parameters_and_writes_nothing(tmp_path, tiny_base, folder, kwargs, match,
                                                                         monkeypatch):
    """#22 item 7: the method is a typed option object that takes only its own settings (what does
    not apply cannot be passed, or is refused), and every error names Python parameters, never a
    command-line flag."""
    monkeypatch.chdir(tmp_path)
    options = {**QUICK, **kwargs}
    with pytest.raises(SubtuneError, match=match) as caught:
        subtune.train(tiny_base, f"imagefolder:{folder}", "t.pt", **options)
    assert "--" not in str(caught.value) and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_method_options_take_only_their_own_settings():
    with pytest.raises(TypeError, match="siamese"):
        LoRA(siamese=True)
    with pytest.raises(TypeError, match="blocks"):
        Linear(blocks="7-8")
    with pytest.raises(TypeError, match="rank"):
        SubTuning("7-8", rank=4)


def test_prune_from_paths_and_objects_alike(tmp_path, trained, tiny_base):
    from subtune.formats import load_task, save_base

    save_base(tmp_path / "base.pt", tiny_base)
    from_files = subtune.prune(tmp_path / "base.pt", trained.output, tmp_path / "p.pt", ratio=0.5, norm="l1")
    in_memory = subtune.prune(tiny_base, trained.task, ratio=0.5, norm="l1")
    assert from_files.files == [tmp_path / "p.pt", tmp_path / "p.report.json"] and in_memory.files == []
    on_disk = load_task(tmp_path / "p.pt")
    for block, state in in_memory.task.block_state.items():
        assert all(torch_equal(v, on_disk.block_state[block][k]) for k, v in state.items())
    assert 0 < in_memory.params_kept < 1 and from_files.report["blocks"] == in_memory.report["blocks"]
    with pytest.raises(SubtuneError, match="strictly between 0 and 1"):
        subtune.prune(tiny_base, trained.task, tmp_path / "q.pt", ratio=1.0)
    assert not (tmp_path / "q.pt").exists()


def test_prune_sweep_points_and_files(tmp_path, trained, tiny_base, folder):
    result = subtune.prune_sweep(tiny_base, trained.task, f"imagefolder:{folder}", tmp_path / "sweep.json",
                                 ratios=[0.25, 0.5], scopes=["local"], norms=["l2"], epochs=0)
    assert result.files == [tmp_path / "sweep.json", tmp_path / "sweep.png"]
    points = json.loads((tmp_path / "sweep.json").read_text())["points"]
    assert len(points) == 2 == len(result.sweep.points)
    kept = [p["params_kept"] for p in points]
    assert 0 < kept[1] < kept[0] < 1
    with pytest.raises(SubtuneError, match="`scopes`"):
        subtune.prune_sweep(tiny_base, trained.task, f"imagefolder:{folder}", scopes=["both"])


def test_select_picks_the_smallest_margins_and_excludes_earlier_picks(tmp_path, trained, tiny_base):
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(9):
        _write_image(pool / f"{i}.png", list(COLOURS.values())[i % 3], 100 + i)
    first = subtune.select(tiny_base, trained.output, f"images:{pool}", 4, tmp_path / "picks.json")
    margins = [p["margin"] for p in first.picks]
    assert margins == sorted(margins) and first.report["pool_size"] == 9 and len(first.ids) == 4
    assert first.report["margin_quantiles"]["0.0"] == pytest.approx(margins[0])
    assert all(p["p1"] - p["p2"] == pytest.approx(p["margin"]) for p in first.picks)
    assert json.loads((tmp_path / "picks.json").read_text()) == json.loads(json.dumps(first.report))
    second = subtune.select(tiny_base, trained.task, f"images:{pool}", 9, exclude=tmp_path / "picks.json")
    assert second.output is None and second.report["excluded"] == 4 and len(second.picks) == 5
    assert not set(second.ids) & set(first.ids) and min(p["margin"] for p in second.picks) >= margins[-1] - 1e-6
    with pytest.raises(SubtuneError, match="nothing to pick"):
        subtune.select(tiny_base, trained.task, f"images:{pool}", 1, exclude=first.ids + second.ids)


def test_profile_resumes_after_an_interrupt_and_runs_in_memory_alike(tmp_path, tiny_base, folder, capsys, monkeypatch):
    """A Ctrl-C during the runs (here raised where the first row is shown, after its run is saved)
    raises ProfileInterrupted with what is on disk; the same call again runs only the rest and
    writes the JSON, the PNG and the runs; without an output nothing is written, same numbers.
    One torch thread: torch is loaded here before OMP_WAIT_POLICY=PASSIVE could apply, and
    spinning OpenMP threads on a shared 2-core machine made each tiny run take seconds."""
    monkeypatch.chdir(tmp_path)
    data = f"imagefolder:{folder}"
    kw = dict(window=2, starts=[6, 7], baselines=[Linear()], threads=1, **QUICK)  # 3 runs

    def interrupt(line: str) -> None:
        if line.startswith("    "):  # the first profile row
            raise KeyboardInterrupt

    with pytest.raises(subtune.ProfileInterrupted) as caught:
        subtune.profile(tiny_base, data, "p.json", on_progress=interrupt, **kw)
    assert isinstance(caught.value, KeyboardInterrupt)
    assert (caught.value.saved, caught.value.total, caught.value.runs) == (1, 3, Path("p.runs"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.runs"] and len(list(Path("p.runs").iterdir())) == 1

    lines: list[str] = []
    result = subtune.profile(tiny_base, data, "p.json", on_progress=lines.append, **kw)
    assert result.files == [Path("p.json"), Path("p.png")] and result.runs == Path("p.runs")
    assert json.loads(Path("p.json").read_text()) == json.loads(json.dumps(result.report))
    assert Path("p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(list(Path("p.runs").iterdir())) == 3
    assert result.profile.resumed == 1 and result.report["resumed_runs"] == 1
    assert [e["blocks"] for e in result.entries] == [[6, 7], [7, 8]] and list(result.baselines) == ["linear"]
    assert lines[0].startswith("data ") and "3 runs; 1 already finished in p.runs" in lines[1]
    assert len([x for x in lines if ": validation " in x]) == 3 and capsys.readouterr() == ("", "")

    memory = subtune.profile(tiny_base, data, **kw)
    assert memory.files == [] and memory.runs is None and len(list(tmp_path.iterdir())) == 3
    def losses(r):  # every run's last training loss (the tiny runs' accuracies tie), windows then baselines
        return [run["train_loss"] for row in [*r.entries, *r.baselines.values()] for run in row["runs"]]

    assert losses(memory) == losses(result) and None not in losses(result)
    assert [e["accuracy"] for e in memory.entries] == [e["accuracy"] for e in result.entries]
    assert memory.best == result.best and memory.report["resumed_runs"] == 0

    for bad, match in (({"baselines": "linear,bogus"}, "`baselines`"), ({"seeds": [0, 0]}, "`seeds`"),
                       ({"starts": [8]}, "do not fit"), ({"baselines": [LoRA(rank=4)]}, "differs from the defaults"),
                       ({"baselines": [SubTuning("7")]}, "the windows are the SubTuning runs"),
                       ({"ray": dict(address="local")}, "`ray`: expected")):
        with pytest.raises(SubtuneError, match=match) as caught:
            subtune.profile(tiny_base, data, "q.json", **{**kw, **bad})
        assert "--" not in str(caught.value)
    assert not Path("q.json").exists() and not Path("q.runs").exists()


def test_benchmark_and_triton_repo(tmp_path, trained, tiny_base):
    compiled = subtune.compile(tiny_base, [trained.task], tmp_path / "m.onnx", verify=False, report=False)
    timed = subtune.benchmark(compiled.output, batches=[1, 2], warmup=1, iters=2, repeats=2, threads=1,
                              json=tmp_path / "t.json", progress=False)
    assert timed.files == [tmp_path / "t.json"] and "median ms" in timed.table()
    assert [t["batch"] for t in json.loads((tmp_path / "t.json").read_text())["timings"]] == [1, 2]
    with pytest.raises(SubtuneError, match="subtune base/task file"):
        subtune.benchmark(trained.output)
    repo = subtune.triton_repo(compiled.output, tmp_path / "repo")
    assert isinstance(repo, subtune.Repository) and repo.outputs == ["base", "colours"]
    assert (tmp_path / "repo" / "m" / "config.pbtxt").is_file() and repo.backend == "python"
    with pytest.raises(SubtuneError, match="exists"):
        subtune.triton_repo(compiled.output, tmp_path / "repo")


def test_the_command_line_shows_library_warnings_once(tmp_path, capsys, tiny_base, folder):
    """Library code logs; `subtune` shows warnings on stderr, one line each, and removes its
    handler afterwards (in-process callers do not stack handlers)."""
    import logging

    from subtune.cli import main
    from subtune.formats import save_base

    save_base(tmp_path / "base.pt", tiny_base)
    handlers = list(logging.getLogger("subtune").handlers)
    argv = ["train", str(tmp_path / "base.pt"), "--data", f"imagefolder:{folder}", "--blocks", "8", "--epochs", "1",
            "--image-size", "16", "--batch-size", "8", "--augment", "flip", "-o", str(tmp_path / "t.pt")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err.count("augmentation 'flip'") == 1 and "trained task 't' on block 8" in out
    assert logging.getLogger("subtune").handlers == handlers


def test_docs_train_example_runs_as_written(tmp_path):
    """docs/python-api.md's train -> compile example, on a tiny `flowers` folder made here (its text says
    `imagefolder:flowers`: the reader's own folder of DIR/train/<class>/ images)."""
    seed = 0
    for split, n in (("train", 6), ("val", 3)):
        for name, colour in COLOURS.items():
            (tmp_path / "flowers" / split / name).mkdir(parents=True)
            for i in range(n):
                seed += 1
                _write_image(tmp_path / "flowers" / split / name / f"{i}.png", colour, seed)
    code = doc_example(PYTHON_API_DOC.read_text(), TRAIN_EXAMPLE)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["[7, 8] ['blue', 'green', 'red']", "['flowers.pt', 'flowers.train.json'] True",
                                        "True ['base', 'flowers']"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.pt", "flowers", "flowers.pt", "flowers.train.json",
                                                           "model.onnx", "model.report.json"]


# --------------------------------------------------------------------------- process state (#22 item 7)


def _umask_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    pytest.skip("this kernel does not show the umask in /proc/self/status")


def test_api_calls_leave_process_state_as_they_found_it(tmp_path, tiny_base, trained, folder, monkeypatch):
    """train, profile and select with `threads=1`: torch's thread count, the environment (no
    OMP_WAIT_POLICY appears), the signal handlers and the umask are as they were afterwards."""
    import signal

    import torch

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    state = lambda: (torch.get_num_threads(), dict(os.environ), signal.getsignal(signal.SIGINT),  # noqa: E731
                     signal.getsignal(signal.SIGTERM), _umask_now())
    before = state()
    data = f"imagefolder:{folder}"
    subtune.train(tiny_base, data, tmp_path / "t.pt", method=SubTuning("8"), threads=1, **QUICK)
    assert state() == before
    subtune.profile(tiny_base, data, window=1, starts=[8], threads=1, **QUICK)
    assert state() == before
    subtune.select(tiny_base, trained.task, data, 2, pool_split="test", threads=1)
    assert state() == before
    with pytest.raises(SubtuneError):  # and after a failure
        subtune.train(tiny_base, data, method=SubTuning("7-9"), threads=1, **QUICK)
    assert state() == before


def test_writing_a_file_never_sets_the_umask(tmp_path, monkeypatch):
    """The mode of an atomically written file follows the umask, read without setting it (setting
    it to read it back changes it, for a moment, for every thread of the process)."""
    from subtune.atomic import write_text

    mask = _umask_now()

    def refuse(*_):
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", refuse)
    write_text(tmp_path / "x.json", "{}")
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask
