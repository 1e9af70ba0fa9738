"""Property: any valid set of task ranges compiles to a graph that matches PyTorch eager.

Hypothesis draws task sets on `subtune:tiny_resnet` (ResNet-18's 8-block structure at 1/8 width) at 32x32: 0-4 tasks, each a random
consecutive range, some Siamese, fork points and merges in every combination. Each example is
exported and verified at batch 1 and 5 by the pipeline (1e-4 relative)."""

import pytest
from hypothesis import given, HealthCheck, settings, strategies as st

from subtune.compiler.pipeline import CompileOptions, compile_plan
from subtune.compiler.plan import Plan
from subtune.synthetic import synthetic_task

NUM_BLOCKS = 8


@st.composite
def task_ranges(draw):
    n = draw(st.integers(0, 4))
    out = []
    for _ in range(n):
        first = draw(st.integers(1, NUM_BLOCKS))
        last = draw(st.integers(first, min(NUM_BLOCKS, first + 2)))
        out.append((first, last, draw(st.booleans())))
    return out


@pytest.fixture(scope="module")
def base_and_backbone():
    from subtune.models import make_base

    base = make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)
    return base, base.build()[1]


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ranges=task_ranges())
def test_random_task_sets_verify(base_and_backbone, ranges):
    base, bb = base_and_backbone
    tasks = [synthetic_task(base, f"t{i}", list(range(f, l + 1)), siamese=s, seed=i, num_classes=3 + i, backbone=bb)
             for i, (f, l, s) in enumerate(ranges)]
    plan = compile_plan(Plan(base, tasks, input_size=(32, 32)), CompileOptions(verify_batches=(1, 5)))
    checks = plan.report["verification"]["checks"]
    assert len(checks) == 2 * (1 + len(tasks))
    assert all(c["relative_error"] <= 1e-4 for c in checks)
