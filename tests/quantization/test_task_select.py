"""Reduced precision of a --task-select graph: the INT8 base output stays pinned (bit for bit the
base-only INT8 graph's) under any mask, in both QDQ forms; calibration and the held-out checks ask
for every task; FP16 keeps the heads (behind the NaN fills) in fp32."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from torch import nn

from subtune.compiler.pipeline import CompileOptions, compile_plan
from subtune.compiler.plan import Plan
from subtune.delta import make_tap_task
from subtune.models import make_base
from subtune.quantization import CalibrationSet, PrecisionOptions, reduce_precision
from subtune.quantization.compare import EMULATE_QDQ
from subtune.quantization.int8 import quantize_int8
from subtune.runtimes.onnxruntime import make_session
from subtune.synthetic import synthetic_task

SIZE = (32, 32)


@pytest.fixture(scope="module")
def int8_plan():
    """tiny_resnet with a task that merges back, one ending at the last block, a Siamese one and a
    tap task, compiled with --task-select --precision int8 (cpu form) on random calibration images."""
    base = make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)
    _, bb = base.build()
    tasks = [synthetic_task(base, "early", [2, 3], seed=1, backbone=bb),
             synthetic_task(base, "last", [7, 8], seed=2, backbone=bb),
             synthetic_task(base, "siam", [5, 6], seed=3, siamese=True, backbone=bb)]
    torch.manual_seed(0)
    tasks.append(make_tap_task(base, "probe", [{"point": 3, "grid": [2, 2], "dim": 32}], nn.Linear(32, 3)))
    calibration = CalibrationSet(np.random.default_rng(0).standard_normal((24, 3, *SIZE), dtype=np.float32))
    precision = PrecisionOptions("int8", calibration, int8_target="cpu", fallback=False, sensitivity=False,
                                 measure_latency=False, min_agreement=0.0, max_accuracy_drop=1.0).check()
    plan = compile_plan(Plan(base, tasks, input_size=SIZE), CompileOptions(task_select=True, precision=precision))
    return plan, calibration


def _masks(batch, k, rng):
    return [np.ones((batch, k), bool), np.zeros((batch, k), bool), np.eye(k, dtype=bool)[rng.integers(0, k, batch)],
            rng.random((batch, k)) < 0.5]


def _bases(model: ir.Model, base_only: ir.Model, emulate: bool, k: int):
    config = dict([EMULATE_QDQ]) if emulate else None
    graph = make_session(ir.to_proto(model).SerializeToString(), config=config)
    alone = make_session(ir.to_proto(base_only).SerializeToString(), config=config)
    assert [i.name for i in alone.get_inputs()] == ["images"]  # the base stream reads no mask
    rng = np.random.default_rng(1)
    for batch in (1, 5):
        images = rng.standard_normal((batch, 3, *SIZE), dtype=np.float32)
        (want,) = alone.run(["base"], {"images": images})
        for mask in _masks(batch, k, rng):
            (got,) = graph.run(["base"], {"images": images, "tasks": mask})
            yield batch, mask, got, want


def test_int8_base_is_pinned_under_every_mask_cpu_form(int8_plan):
    plan, _ = int8_plan
    checked = plan.report["precision"]["verification"]
    assert checked["base_output_vs_base_only"]["max_abs_difference"] == 0.0  # the compile's own check, all tasks asked
    for batch, mask, got, want in _bases(plan.onnx, plan.base_only_onnx, False, len(plan.tasks)):
        assert np.array_equal(got, want), (batch, mask.tolist())


def test_int8_base_is_pinned_under_every_mask_tensorrt_form(int8_plan):
    plan, calibration = int8_plan
    q = quantize_int8(plan.fp32_onnx, calibration, target="tensorrt")
    for batch, mask, got, want in _bases(q.model, q.base_only, True, len(plan.tasks)):
        assert np.array_equal(got, want), (batch, mask.tolist())


def test_every_task_branch_was_calibrated(int8_plan):
    """Calibration asked for every task on every image: each rejoining task stream has a measured,
    finite range (a branch that saw no rows would have none)."""
    plan, _ = int8_plan
    merges = plan.report["precision"]["merges"]
    rejoining = [t for m in merges for t in m["rejoining"]]
    assert rejoining and all(np.isfinite(t["range"]).all() and t["range"][1] > t["range"][0] for t in rejoining)


def test_fp16_keeps_the_heads_behind_the_fills_in_fp32(int8_plan):
    plan, calibration = int8_plan
    reduced = reduce_precision(plan.fp32_onnx, PrecisionOptions("fp16", calibration).check(), calibration)
    fills = [n for n in reduced.model.graph if (n.metadata_props.get("subtune.stream_role") or "").startswith("fill:")
             and n.op_type == "ScatterND"]
    assert len(fills) == len(plan.tasks)
    for fill in fills:
        head = fill.inputs[2].producer()
        while head.op_type == "Cast":  # the converter's casts at fp32 boundaries
            head = head.inputs[0].producer()
        assert head.op_type == "Gemm", head.name
        assert [v.dtype for v in (*head.inputs, *head.outputs)] == [ir.DataType.FLOAT] * 4, head.name
    session = make_session(ir.to_proto(reduced.model).SerializeToString())
    images = np.random.default_rng(2).standard_normal((4, 3, *SIZE), dtype=np.float32)
    k = len(plan.tasks)
    outs = [session.run(None, {"images": images, "tasks": m}) for m in _masks(4, k, np.random.default_rng(3))]
    assert all(np.array_equal(outs[0][0], o[0]) for o in outs[1:])
    for o, mask in zip(outs, _masks(4, k, np.random.default_rng(3))):
        assert all(np.array_equal(np.isnan(o[1 + i]).all(1), ~mask[:, i]) for i in range(k))
