"""Compiled graphs with pruned tasks verify against the pruned PyTorch modules (ONNX Runtime vs
eager, batch 1 and 5, inside compile_plan), and the base output stays the base model's."""

import dataclasses
import json

import pytest

from subtune.compiler.pipeline import CompileOptions, compile_plan
from subtune.compiler.plan import Plan
from subtune.pruning.plan import PruneOptions
from subtune.pruning.prune import prune_task

from .conftest import FAMILIES

# Each export costs 15-30 s of CPU on 2 cores, so the fast set compiles one family: the tiny ViT,
# whose pruned attention (HeadAttention) is the one new operator pattern pruning brings to the
# graph. The convolutional families compile in the slow set (-m slow); every family's pruned file
# is checked against its pruned modules in test_prune.py either way.
SLOW = {"resnet18", "resnet50", "efficientnet", "mobilenetv3"}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in FAMILIES])
def test_pruned_tasks_compile_and_verify(family, family_models):
    base, backbone, task, size = family_models(family)
    ahead = prune_task(task, base, PruneOptions(0.3, "l1", "global", round_to=8), backbone=backbone, input_size=size)
    tasks = [dataclasses.replace(ahead.task, name="pruned_ahead"), dataclasses.replace(task, name="pruned_here")]
    plan = compile_plan(Plan(base, tasks, input_size=size), CompileOptions(prune=PruneOptions(0.5)))
    pruning = plan.report["pruning"]["tasks"]
    assert pruning["pruned_ahead"] == "already pruned: kept as it is"
    assert pruning["pruned_here"]["params_kept"] < 0.6
    assert "pruned" in plan.tasks[1].meta  # the graph holds the pruned blocks
    checks = plan.report["verification"]["checks"]
    outputs = ("base", "pruned_ahead", "pruned_here")
    assert {(c["batch"], c["output"]) for c in checks} == {(b, o) for b in (1, 5) for o in outputs}
    assert max(c["relative_error"] for c in checks) <= 1e-4
    assert {c["reference"] for c in checks if c["output"] == "base"} == {"base model alone"}
    recorded = json.loads(plan.onnx.metadata_props["subtune.pruning"])  # services can see what was pruned
    assert recorded["pruned_ahead"]["options"]["ratio"] == 0.3 and recorded["pruned_here"]["options"]["ratio"] == 0.5
    assert recorded["pruned_here"]["params_kept"] == pruning["pruned_here"]["params_kept"]
