"""Tap tasks (Head2Toe, the linear probe) in the compiler: no fork, heads on the shared stream's
base chunk, verified against each task alone; the task file's new kind loads, old files too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from subtune.delta.modules import tap_dims
from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
from subtune.compiler.plan import Plan
from subtune.compiler.schedule import Fork, schedule_streams
from subtune.errors import SubtuneError
from subtune.delta import make_tap_task, validate_task
from subtune.formats import load_task, save_task
from subtune.models import make_base
from subtune.synthetic import synthetic_task

SIZE = (32, 32)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    base = make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)
    return base, base.build()[1]


def _head2toe(base, bb, name="h2t", seed=0):
    """Taps on the stem, blocks 2, 4 (3x3 grid on a 16x16 map: uneven bins), 5, 8 and the features."""
    points = [{"point": 1, "grid": [2, 2]}, {"point": 3, "grid": [2, 2]}, {"point": 5, "grid": [3, 3]},
              {"point": 6, "grid": [2, 2]}, {"point": 9, "grid": [1, 1]}, {"point": 10, "grid": None}]
    for p, d in zip(points, tap_dims(bb, points, SIZE)):
        p["dim"] = d
    g = torch.Generator().manual_seed(seed)
    total = sum(p["dim"] for p in points)
    select = torch.sort(torch.randperm(total, generator=g)[:40]).values
    torch.manual_seed(seed)
    return make_tap_task(base, name, points, nn.Linear(40, 4), select=select)


def _probe(base, bb, name="probe"):
    torch.manual_seed(1)
    return make_tap_task(base, name, [{"point": bb.num_blocks + 2, "grid": None, "dim": bb.feature_dim}],
                         nn.Linear(bb.feature_dim, 3))


def _run(plan, images):
    from subtune.runtimes.onnxruntime import session_from_bytes

    return session_from_bytes(serialize(plan)).run(plan.output_names, {"images": images.numpy()})


def test_pooled_dims_follow_the_grid(tiny):
    _, bb = tiny
    # tiny_resnet at 32px: stem 8ch, block-2 output 8ch, block-4 output 16ch, block-5 output 32ch
    assert tap_dims(bb, [{"point": 1, "grid": [2, 2]}, {"point": 5, "grid": [3, 3]},
                         {"point": 6, "grid": [1, 1]}, {"point": 10, "grid": None}], SIZE) == [32, 144, 32, 64]


def test_grid_pool_equals_adaptive_average_pooling():
    from subtune.delta.modules import grid_pool

    x = torch.randn(2, 5, 7, 10)
    for grid in ([1, 1], [2, 2], [3, 4], [7, 10]):
        want = nn.functional.adaptive_avg_pool2d(x, grid).flatten(1)
        assert torch.allclose(grid_pool(x, grid), want, atol=1e-6)
    assert torch.allclose(grid_pool(torch.ones(2, 4, 6), None), torch.ones(2, 6))


def test_head2toe_and_probe_compile_with_no_fork_and_the_base_untouched(tiny):
    base, bb = tiny
    tasks = [_head2toe(base, bb), _probe(base, bb)]
    plan = compile_plan(Plan(base, tasks), CompileOptions(verify_batches=(1, 5)))
    assert not [s for s in plan.schedule.steps if isinstance(s, Fork)]
    ops = [n.op_type for n in plan.onnx.graph]
    names = [n.name for n in plan.onnx.graph]
    assert not [n for n in names if n.startswith(("fork_", "merge_", "final_merge", "split_heads"))]
    assert ops.count("Conv") == sum(isinstance(m, nn.Conv2d) for m in bb.model.modules())  # every conv runs once
    assert "Gather" in ops  # the selected features
    import json

    described = json.loads(plan.onnx.metadata_props["subtune.tasks"])
    assert [(t["name"], t["kind"], t["blocks"]) for t in described] == [("h2t", "tap", []), ("probe", "tap", [])]
    assert described[0]["tap_points"] == [1, 3, 5, 6, 9, 10] and described[1]["tap_points"] == [10]
    checks = plan.report["verification"]["checks"]
    assert {(c["batch"], c["output"]) for c in checks} == {(b, o) for b in (1, 5) for o in ("base", "h2t", "probe")}
    images = torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(7))
    model, _ = base.build()
    got = _run(plan, images)
    alone = _run(compile_plan(Plan(base, []), CompileOptions(verify=False, check_tensorrt=False)), images)[0]
    with torch.no_grad():
        assert np.abs(got[0] - model(images).numpy()).max() <= 1e-5
    assert np.array_equal(got[0], alone)  # adding tap tasks leaves the base output bit-identical here


def test_taps_read_the_base_chunk_after_merges_in_a_mixed_graph(tiny):
    """Deltas that merge before the tapped points put 2-3 chunks in the shared stream; the taps
    must read chunk 0 only (the verification compares every output with the task alone)."""
    base, bb = tiny
    early = synthetic_task(base, "early", [2, 3], seed=1, backbone=bb)
    mid = synthetic_task(base, "mid", [4, 5], seed=2, backbone=bb)
    late = synthetic_task(base, "late", [7, 8], seed=3, backbone=bb)
    tasks = [early, _head2toe(base, bb), mid, _probe(base, bb), late]
    plan = compile_plan(Plan(base, tasks), CompileOptions(verify_batches=(1, 5)))
    lower = plan.module
    assert lower.tap_chunks[9] == 3 and lower.tap_chunks[3] == 1  # after two merges / before any
    worst = max(c["relative_error"] for c in plan.report["verification"]["checks"])
    assert worst <= 1e-4
    assert [s.task for s in plan.schedule.steps if isinstance(s, Fork)] == [0, 2, 4]


def test_schedule_skips_tap_tasks():
    s = schedule_streams([(2, 3), None, (None, None), (8, 8)], 8)
    assert [(f.task, f.block) for f in s.steps if isinstance(f, Fork)] == [(0, 2), (3, 8)]
    assert s.final_chunks == (None, 0, 3)


def test_tap_task_file_round_trips_and_old_task_files_still_load(tiny, tmp_path):
    import subtune.formats as formats

    base, bb = tiny
    task = _head2toe(base, bb)
    save_task(tmp_path / "h.pt", task)
    raw = torch.load(tmp_path / "h.pt", weights_only=True)
    assert raw["kind"] == "tap" and raw["blocks"] == [] and raw["format"] == formats.TASK_FORMAT
    back = load_task(tmp_path / "h.pt")
    assert back.kind == "tap" and back.taps["points"] == task.taps["points"]
    assert torch.equal(back.taps["select"], task.taps["select"]) and back.first is None
    validate_task(back, base)
    delta = synthetic_task(base, "d", [3], seed=1, backbone=bb)
    save_task(tmp_path / "d.pt", delta)
    raw = torch.load(tmp_path / "d.pt", weights_only=True)
    assert "kind" not in raw and "taps" not in raw  # delta files are written exactly as before
    assert load_task(tmp_path / "d.pt").kind == "delta"


@pytest.mark.parametrize("change, message", [
    (lambda t: t.taps["points"][0].update(dim=99), "gives 32 features"),
    (lambda t: t.taps.update(select=torch.tensor([5, 3])), "ascending distinct indices"),
    (lambda t: t.taps["points"].reverse(), "must be ascending, distinct"),
    (lambda t: t.taps["points"].append({"point": 11, "grid": None, "dim": 64}), "within 1..10"),
    (lambda t: t.head.update(weight=torch.zeros(4, 41)), "selected features"),
])
def test_bad_tap_tasks_are_refused_with_one_line(tiny, tmp_path, change, message):
    from subtune.delta import validate_task

    base, bb = tiny
    task = _head2toe(base, bb)
    change(task)
    with pytest.raises(SubtuneError, match=message) as e:
        validate_task(task, base)
    assert "\n" not in str(e.value)
    from subtune.formats import task_to_dict

    raw = task_to_dict(task)
    raw["kind"] = "prompt"
    torch.save(raw, tmp_path / "k.pt")
    with pytest.raises(SubtuneError, match="task kind 'prompt'"):
        load_task(tmp_path / "k.pt")
