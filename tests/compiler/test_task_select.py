"""--task-select: each image computes the base plus only the tasks it asks for (compiler/lower.py,
TaskSelectModel; passes/task_rows_from_mask.py). Checked here against PyTorch eager with code of
its own (not the compiler's verification), at batch 1 and 5 under several masks, with tasks that
merge back, end at the last block, are Siamese, and tap (Head2Toe, linear probe)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
from subtune.compiler.plan import Plan
from subtune.compiler.reference import reference_outputs
from subtune.delta import make_tap_task
from subtune.delta.modules import tap_dims
from subtune.errors import SubtuneError
from subtune.models import make_base
from subtune.runtimes.onnxruntime import session_from_bytes
from subtune.synthetic import synthetic_task

SIZE = (32, 32)
TOLERANCE = 1e-4  # relative to each output's scale, as the compiler verifies


def _tasks(base, bb):
    """merges back after block 3; ends at the last block; Siamese; Head2Toe on early points; a linear probe."""
    tasks = [synthetic_task(base, "early", [2, 3], seed=1, backbone=bb),
             synthetic_task(base, "last", [bb.num_blocks - 1, bb.num_blocks], seed=2, backbone=bb),
             synthetic_task(base, "siam", [5, 6], seed=3, siamese=True, backbone=bb)]
    points = [{"point": 1, "grid": [2, 2]}, {"point": 4, "grid": [1, 1]}, {"point": bb.num_blocks + 2, "grid": None}]
    for p, d in zip(points, tap_dims(bb, points, SIZE)):
        p["dim"] = d
    torch.manual_seed(0)
    tasks.append(make_tap_task(base, "h2t", points, nn.Linear(sum(p["dim"] for p in points), 4)))
    tasks.append(make_tap_task(base, "probe", [{"point": bb.num_blocks + 2, "grid": None, "dim": bb.feature_dim}],
                               nn.Linear(bb.feature_dim, 3)))
    return tasks


@pytest.fixture(scope="module")
def compiled():
    """The same base and tasks compiled with and without --task-select (verified: the compiler's
    own checks run too)."""
    base = make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)
    _, bb = base.build()
    tasks = _tasks(base, bb)
    selected = compile_plan(Plan(base, tasks, input_size=SIZE), CompileOptions(task_select=True))
    plain = compile_plan(Plan(base, tasks, input_size=SIZE), CompileOptions(verify=False))
    return base, bb, tasks, selected, plain


def _masks(batch, k, rng):
    return {"all": np.ones((batch, k), bool), "none": np.zeros((batch, k), bool),
            "one per image": np.eye(k, dtype=bool)[rng.integers(0, k, batch)], "random": rng.random((batch, k)) < 0.5}


@pytest.mark.parametrize("batch", [1, 5])
def test_selected_outputs_equal_each_task_alone_and_the_base_never_moves(compiled, batch):
    base, bb, tasks, plan, _ = compiled
    session = session_from_bytes(serialize(plan))
    rng = np.random.default_rng(batch)
    images = rng.standard_normal((batch, 3, *SIZE), dtype=np.float32)
    refs = [r.numpy() for r in reference_outputs(base.build()[0], bb, tasks, torch.from_numpy(images))]
    bases = []
    for name, mask in _masks(batch, len(tasks), rng).items():
        outs = session.run(plan.output_names, {"images": images, "tasks": mask})
        bases.append(outs[0])
        assert np.abs(outs[0] - refs[0]).max() <= TOLERANCE * np.abs(refs[0]).max(), name
        for i, (task, out, ref) in enumerate(zip(tasks, outs[1:], refs[1:])):
            asked = mask[:, i]
            assert out.shape == ref.shape, (name, task.name)
            assert np.isnan(out[~asked]).all() and not np.isnan(out[asked]).any(), (name, task.name)  # the fill
            assert np.abs(out[asked] - ref[asked]).max(initial=0.0) <= TOLERANCE * np.abs(ref).max(), (name, task.name)
    assert all(np.array_equal(bases[0], b) for b in bases[1:])  # bit for bit, whatever the mask


def test_the_graph_takes_images_and_a_mask_and_says_so(compiled):
    _, _, tasks, plan, _ = compiled
    model = onnx.load_from_string(serialize(plan))
    inputs = {v.name: v.type.tensor_type for v in model.graph.input}
    assert list(inputs) == ["images", "tasks"]
    assert inputs["tasks"].elem_type == onnx.TensorProto.BOOL
    assert [d.dim_param or d.dim_value for d in inputs["tasks"].shape.dim] == ["batch", len(tasks)]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["subtune.task_select"]) == {"input": "tasks", "dtype": "bool", "fill": "NaN",
                                                        "columns": [t.name for t in tasks]}
    assert json.loads(meta["subtune.verification"])["masks"] == ["all", "none", "one task per image", "random"]
    assert meta["subtune.verified"] == "true"
    assert plan.report["tensorrt_compatible"]  # no Split with run-time sizes, axes constant


def test_verification_recorded_every_mask_at_batch_1_and_5(compiled):
    _, _, tasks, plan, _ = compiled
    ver = plan.report["verification"]
    assert ver["passed"] and ver["batches"] == [1, 5]
    checks = ver["checks"]
    assert {(c["batch"], c["mask"]) for c in checks} == {(b, m) for b in (1, 5) for m in ver["task_select"]["masks"]}
    all_true = [c for c in checks if c["mask"] == "all"]
    assert {c["output"] for c in all_true} == {"base", *(t.name for t in tasks)}
    assert {c["output"] for c in checks if c["mask"] == "none"} == {"base"}  # no task rows to compare
    assert max(c["relative_error"] for c in checks) <= TOLERANCE


def test_every_node_has_a_stream_role_from_the_lowering(compiled):
    _, _, tasks, plan, _ = compiled
    roles = {n.metadata_props.get("subtune.stream_role") for n in plan.onnx.graph}
    assert None not in roles
    for t in tasks:
        assert {f"rows:{t.name}", f"fill:{t.name}", f"fork:{t.name}"} <= roles, t.name
    names = [n.name for n in plan.onnx.graph]  # readable names for people (NameStreamNodesPass)
    for prefix in ("task_rows/early/NonZero", "fork_early_before_block2/", "select_siam_base_features/",
                   "select_h2t_taps/", "fill_probe/", "split_heads/"):
        assert any(n.startswith(prefix) for n in names), prefix


def test_without_the_option_the_graph_is_the_plain_one(compiled):
    """No mask input, no selection ops, no task-select metadata: today's graph (the byte-for-byte
    comparison against the main branch is in the report of the change that added the option)."""
    _, _, _, selected, plain = compiled
    model = onnx.load_from_string(serialize(plain))
    assert [v.name for v in model.graph.input] == ["images"]
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"NonZero", "ScatterND", "ScatterElements"}
    assert "subtune.task_select" not in {p.key for p in model.metadata_props}
    assert {n.op_type for n in selected.onnx.graph} >= {"NonZero", "ScatterND"}


def test_task_select_needs_tasks_and_a_free_input_name():
    base = make_base("subtune:tiny_resnet", {}, seed=0)
    with pytest.raises(SubtuneError, match="--task-select needs at least one task"):
        compile_plan(Plan(base, [], input_size=SIZE), CompileOptions(task_select=True, verify=False), until="validate")
    clash = synthetic_task(base, "tasks", [2], seed=1)
    with pytest.raises(SubtuneError, match="a task is named 'tasks'"):
        compile_plan(Plan(base, [clash], input_size=SIZE), CompileOptions(task_select=True, verify=False),
                     until="validate")


def test_an_engine_output_is_refused_before_any_work(tmp_path):
    import subtune

    base = make_base("subtune:tiny_resnet", {}, seed=0)
    with pytest.raises(SubtuneError, match="task selection is built for ONNX Runtime for now, not TensorRT engines"):
        subtune.compile(base, [synthetic_task(base, "a", [2], seed=1)], tmp_path / "e.plan", task_select=True)
    assert list(tmp_path.iterdir()) == []
