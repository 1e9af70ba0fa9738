"""Running a compiled graph from Python (subtune.load_graph, CompiledGraphRunner): by task name or
mask on a --task-select graph compiled from the command line; a bad `tasks` input refused in one
line; and (marked `gpu`) zero-row branches on ONNX Runtime's CUDA provider."""

from __future__ import annotations

import numpy as np
import pytest

import subtune
from subtune.cli import main
from subtune.errors import SubtuneError

SIZE = 32


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """`subtune compile --task-select` on tiny files, and the same tasks without the option."""
    from subtune.formats import save_base, save_task
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    d = tmp_path_factory.mktemp("graphs")
    base = make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)
    _, bb = base.build()
    save_base(d / "base.pt", base)
    for seed, (name, blocks) in enumerate({"early": [2, 3], "late": [7, 8]}.items(), start=1):
        save_task(d / f"{name}.pt", synthetic_task(base, name, blocks, seed=seed, backbone=bb))
    files = [str(d / "base.pt"), str(d / "early.pt"), str(d / "late.pt")]
    assert main(["compile", *files, "-o", str(d / "select.onnx"), "--task-select"]) == 0
    plain = subtune.compile(files[0], files[1:], d / "plain.onnx", verify=False, report=False)
    return d / "select.onnx", plain.output


def _images(batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, SIZE, SIZE), dtype=np.float32)


def test_the_command_line_compiles_and_verifies_under_masks(graphs):
    path, _ = graphs
    report = path.with_suffix(".report.json").read_text()
    assert '"task_select"' in report and '"mask": "one task per image"' in report


def test_tasks_by_name_per_image_or_mask(graphs):
    path, _ = graphs
    x = _images(3)
    with subtune.load_graph(path) as graph:
        assert graph.task_select and graph.tasks == ["early", "late"]
        every = graph.run(x)  # no tasks given: every task on every image
        assert not any(np.isnan(v).any() for v in every.values())
        late = graph.run(x, tasks="late")
        per_image = graph.run(x, tasks=[["early"], [], ["late", "early"]])
        masked = graph.run(x, tasks=np.array([[True, False], [False, False], [True, True]]))
    assert np.isnan(late["early"]).all() and np.array_equal(late["late"], every["late"])
    for out in (per_image, masked):
        assert np.isnan(out["early"][1]).all() and np.isnan(out["late"][:2]).all()
        np.testing.assert_array_equal(out["early"][[0, 2]], every["early"][[0, 2]])
        np.testing.assert_array_equal(out["late"][2], every["late"][2])
    for out in (late, per_image, masked):
        np.testing.assert_array_equal(out["base"], every["base"])  # the base whatever is asked


@pytest.mark.parametrize("tasks,says", [
    (np.ones((3, 2), dtype=np.int64), "must be a bool array [3, 2] (one row per image, one column per task: "
                                      "early, late), found int64 of shape [3, 2]"),
    (np.ones((2, 2), dtype=bool), "found bool of shape [2, 2]"),  # another batch
    (np.ones((3, 3), dtype=bool), "found bool of shape [3, 3]"),  # too wide
    (np.ones(3, dtype=bool), "found bool of shape [3]"),  # not one row per image
    (["dogs"], "no task 'dogs'; its tasks are early, late"),
    ([["early"], ["late"]], "one list of task names per image (3 lists), found 2 entries"),
])
def test_a_bad_tasks_input_is_refused_in_one_line(graphs, tasks, says):
    path, _ = graphs
    with subtune.load_graph(path) as graph:
        with pytest.raises(SubtuneError) as caught:
            graph.run(_images(3), tasks=tasks)
        if isinstance(tasks, np.ndarray):  # the runner interface checks a raw feed the same way
            with pytest.raises(SubtuneError, match="must be a bool array"):
                graph.infer({"images": _images(3), "tasks": tasks})
    message = str(caught.value)
    assert says in message and len(message.splitlines()) == 1


def test_a_graph_without_task_select_runs_everything_and_refuses_a_choice(graphs):
    path, plain = graphs
    x = _images(2)
    with subtune.load_graph(plain) as graph, subtune.load_graph(path) as selected:
        assert not graph.task_select
        out = graph.run(x)
        np.testing.assert_allclose(out["early"], selected.run(x)["early"], rtol=0, atol=1e-5)
        with pytest.raises(SubtuneError, match="compiled without --task-select: every image computes every task"):
            graph.run(x, tasks=["early"])


def test_load_graph_refuses_what_is_not_a_graph(tmp_path):
    with pytest.raises(SubtuneError, match="expected a compiled .onnx graph"):
        subtune.load_graph(tmp_path / "base.pt")
    with pytest.raises(SubtuneError, match="no such file"):
        subtune.load_graph(tmp_path / "missing.onnx")


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 4])
def test_zero_row_branches_run_on_the_cuda_provider(graphs, batch):
    """The CUDA provider has had bugs with zero-size tensors (cuDNN BatchNorm): with no task asked
    for, and with one task only, every branch of the others runs on zero rows."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"CUDAExecutionProvider not available (ONNX Runtime here offers {ort.get_available_providers()})")
    path, _ = graphs
    x = _images(batch, seed=batch)
    with subtune.load_graph(path) as cpu, subtune.load_graph(path, provider="cuda") as gpu:
        assert gpu.describe()["execution_providers"][0] == "CUDAExecutionProvider"
        for tasks in ([], ["late"], ["early"]):
            want, got = cpu.run(x, tasks=tasks), gpu.run(x, tasks=tasks)
            for name in want:
                assert np.array_equal(np.isnan(got[name]), np.isnan(want[name])), (tasks, name)
                keep = ~np.isnan(want[name])
                scale = max(float(np.abs(want[name][keep]).max(initial=0.0)), 1e-12)
                assert np.abs(got[name][keep] - want[name][keep]).max(initial=0.0) <= 1e-2 * scale, (tasks, name)


def test_timing_a_task_select_graph_asks_for_every_task(graphs):
    """`subtune-bench MODEL.onnx` on a --task-select graph: the mask input is fed all true."""
    from subtune.benchmarking.latency import random_feeds
    from subtune.runtimes.onnxruntime import OnnxrtRunner, SessionFromOnnx

    path, _ = graphs
    with OnnxrtRunner(SessionFromOnnx(path, threads=1)) as runner:
        feeds = random_feeds(runner, 3)
        assert feeds["tasks"].dtype == bool and feeds["tasks"].shape == (3, 2) and feeds["tasks"].all()
        assert not any(np.isnan(v).any() for v in runner.infer(feeds).values())
