"""Task selection in the C++ library and CLI (a graph compiled with --task-select): each image asks
for tasks by name or by mask, against Python's ONNX Runtime on the same graph and mask at batch 1
and 4 (every computed value within 1e-5 relative, NaN exactly where a task was not asked for, the
base the same bit for bit under every choice), on both runtimes; bad choices refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cpp.conftest import COARSE, SIZE, python_images, rel_error, run, single_thread_session

TOL = 1e-5
RUNTIMES = ["onnxruntime", "openvino"]  # openvino skips where the build has none (see conftest)
TASKS = ["fashion10", "coarse4"]  # the graph's tasks, in output order: the mask's columns

# (spec for subtune-model-test select, the mask each image gets: one row per image of the batch)
CHOICES = {
    1: [("all", [[1, 1]]), ("tasks=coarse4", [[0, 1]]), ("tasks=fashion10,coarse4", [[1, 1]]),
        ("tasks=", [[0, 0]]), ("per-image=fashion10", [[1, 0]])],
    4: [("all", [[1, 1]] * 4), ("tasks=fashion10", [[1, 0]] * 4), ("tasks=coarse4,fashion10", [[1, 1]] * 4),
        ("tasks=", [[0, 0]] * 4), ("per-image=fashion10;;coarse4,fashion10;coarse4", [[1, 0], [0, 0], [1, 1], [0, 1]])],
}


@pytest.fixture(scope="module")
def select_session(task_select_graph):
    return single_thread_session(task_select_graph)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("batch", [1, 4])
def test_task_lists_match_python_onnxruntime(cpp_build, task_select_graph, select_session, tmp_path, batch, runtime):
    cpp_build.require(runtime)
    x = np.random.default_rng(batch).standard_normal((batch, 3, *SIZE)).astype(np.float32)
    (tmp_path / "in.f32").write_bytes(x.tobytes())
    specs = [spec for spec, _ in CHOICES[batch]]
    r = run([cpp_build.model_test, "select", task_select_graph, tmp_path / "in.f32", batch, tmp_path, runtime, *specs])
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["task_select"] is True and [t["name"] for t in meta["tasks"]] == TASKS
    assert meta["schema"] == 2  # subtune.task_select exists since schema 2: such graphs are stamped 2
    names = [o.name for o in select_session.get_outputs()]
    assert names == ["base", *TASKS]
    base = None
    for i, (spec, rows) in enumerate(CHOICES[batch]):
        mask = np.array(rows, dtype=bool)
        reference = dict(zip(names, select_session.run(None, {"images": x, "tasks": mask})))
        got = {n: np.fromfile(tmp_path / f"{i}.{n}.f32", dtype=np.float32).reshape(reference[n].shape) for n in names}
        for column, task in enumerate(TASKS):
            asked = mask[:, column]
            assert np.isnan(reference[task][~asked]).all() and not np.isnan(reference[task][asked]).any()
            assert (np.isnan(got[task]) == ~asked[:, None]).all(), f"{spec}: NaN rows of {task} are not the mask's"
            err = rel_error(got[task][asked], reference[task][asked])
            assert err <= TOL, f"{task} under {spec} at batch {batch}: relative error {err:.2e} > {TOL}"
        assert rel_error(got["base"], reference["base"]) <= TOL, f"base under {spec}"
        if base is None:
            base = got["base"]
        np.testing.assert_array_equal(got["base"], base, err_msg=f"the base under {spec} moved")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_library_task_selection_api(cpp_build, task_select_graph, cpp_graph, runtime):
    """TaskMask, task_mask and the run overloads agree bit for bit; runs with different masks at once;
    unknown names, masks of the wrong width or rows, and a choice on a plain graph throw one line."""
    cpp_build.require(runtime)
    r = run([cpp_build.model_test, "select-checks", task_select_graph, cpp_graph, runtime])
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout


def test_a_plain_graph_reports_no_task_selection(cpp_build, cpp_graph, tmp_path):
    (tmp_path / "in.f32").write_bytes(np.zeros((1, 3, *SIZE), np.float32).tobytes())
    r = run([cpp_build.model_test, "run", cpp_graph, tmp_path / "in.f32", 1, tmp_path])
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "meta.json").read_text())["task_select"] is False


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cli_prints_only_the_tasks_asked_for(cpp_build, task_select_graph, select_session, cpp_images, tmp_path,
                                            runtime):
    cpp_build.require(runtime)
    out = tmp_path / "out.json"
    r = run([cpp_build.infer, task_select_graph, "--image", *cpp_images, "--tasks", "coarse4", "--threads", 1,
             "--json", out, "--runtime", runtime])
    assert r.returncode == 0, r.stderr
    assert "coarse4:" in r.stdout and "base:" in r.stdout and "fashion10" not in r.stdout, r.stdout
    result = json.loads(out.read_text())
    assert result["tasks"] == ["coarse4"]
    x = python_images(cpp_images[0].parent)
    mask = np.tile([False, True], (len(x), 1))
    reference = dict(zip(["base", *TASKS], select_session.run(None, {"images": x, "tasks": mask})))
    for name in ("base", "coarse4"):
        got = np.array([img["outputs"][name]["logits"] for img in result["images"]], dtype=np.float32)
        assert rel_error(got, reference[name]) <= TOL, name
    for i, img in enumerate(result["images"]):
        assert img["outputs"].keys() == {"base", "coarse4"}
        assert img["outputs"]["coarse4"]["top"][0]["class"] == COARSE[int(np.argmax(reference["coarse4"][i]))]
    # Without --tasks every task is computed and printed; --bench times the choice it is given.
    r = run([cpp_build.infer, task_select_graph, "--runtime", runtime, "--json", out])
    assert r.returncode == 0 and "fashion10:" in r.stdout and "coarse4:" in r.stdout, r.stderr
    assert json.loads(out.read_text())["tasks"] == TASKS
    r = run([cpp_build.infer, task_select_graph, "--bench", "--tasks", "fashion10", "--warmup", 0, "--iters", 2,
             "--repeats", 1, "--runtime", runtime, "--json", out])
    assert r.returncode == 0 and "tasks fashion10" in r.stdout, r.stderr
    assert json.loads(out.read_text())["tasks"] == ["fashion10"]


BAD = {
    "an unknown task": (["--tasks", "dogs"], "no task 'dogs'; its tasks are fashion10, coarse4"),
    "an unknown task among known ones": (["--tasks", "coarse4,dogs"], "no task 'dogs'"),
    "the base as a task": (["--tasks", "base"], "(the base is always computed)"),
    "no task name": (["--tasks", ""], "--tasks needs task names"),
    "an empty name": (["--tasks", "coarse4,"], "expected task names separated by commas"),
    "an unknown task in --bench": (["--bench", "--tasks", "dogs"], "no task 'dogs'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_task_choice_is_one_line(cpp_build, task_select_graph, tmp_path, case):
    args, needle = BAD[case]
    out = tmp_path / "out.json"
    r = run([cpp_build.infer, task_select_graph, *args, "--json", out])
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("subtune-infer: error: ") and needle in lines[0], r.stderr
    assert r.stdout == "" and not out.exists()


# --- the graph's subtune.task_select metadata -------------------------------------------------------

def _spec(**change) -> dict:
    return {"input": "tasks", "dtype": "bool", "columns": list(TASKS), "fill": "NaN", **change}


REFUSED = {
    # Refused by the definition (graph_metadata.schema.json): the same line as Python's decode.
    "a mask of another dtype": ({"subtune.task_select": _spec(dtype="int64")}, None),
    "no columns": ({"subtune.task_select": {"input": "tasks", "dtype": "bool", "fill": "NaN"}}, None),
    # Refused by the reader: the metadata does not match the graph.
    "columns that are not the tasks": ({"subtune.task_select": _spec(columns=["coarse4", "fashion10"])},
                                       "its task-select columns ['coarse4', 'fashion10'] are not its tasks "
                                       "['fashion10', 'coarse4']; compile the graph again"),
    "an input the graph lacks": ({"subtune.task_select": _spec(input="mask")},
                                 "expected two inputs, images and mask (as subtune.task_select says), found images, "
                                 "tasks"),
    "a second input without the key": (None, "expected one input (images), found 2 (images, tasks)"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_task_select_metadata_refused_in_one_line(cpp_build, task_select_graph, tmp_path, case):
    import onnx

    from subtune import graph_metadata
    from tests.metadata_fixtures import rewrite_metadata

    change, needle = REFUSED[case]
    graph = tmp_path / "model.onnx"
    if change is None:
        rewrite_metadata(task_select_graph, graph, drop=("subtune.task_select",))
    else:
        rewrite_metadata(task_select_graph, graph, set=change)
    r = run([cpp_build.infer, graph])
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    if needle is None:
        props = {p.key: p.value for p in onnx.load(str(graph), load_external_data=False).metadata_props}
        with pytest.raises(graph_metadata.GraphMetadataError) as python:
            graph_metadata.decode(props, str(graph))
        assert r.stderr.splitlines() == [f"subtune-infer: error: {python.value}"], r.stderr
    else:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (needle, r.stderr)
