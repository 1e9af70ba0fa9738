"""What a failed verification says (#22 item 6): "a compiler bug" only where the inputs were sane
and the error exceeds the default tolerance; a user's tighter --tolerance gets a message about the
tolerance; a reference that is not finite, or all zeros, is said to be one. And the batch sizes
checked are the ones asked for."""

from __future__ import annotations

import pytest

from subtune.compiler import pipeline
from subtune.compiler.pipeline import CompileOptions
from subtune.compiler.plan import Plan
from subtune.compiler.verify import DEFAULT_TOLERANCE, OutputCheck, _failure
from subtune.errors import VerificationError
from subtune.models import make_base
from subtune.synthetic import synthetic_task

WHAT = "task t as its own full model"


@pytest.fixture(scope="module")
def exported():
    """One task, exported and cleaned up once; each test verifies it its own way."""
    base = make_base("subtune:tiny_resnet", {}, seed=0)
    plan = Plan(base, [synthetic_task(base, "t", [4], seed=1)], input_size=(32, 32))
    opts = CompileOptions()
    for step in (pipeline.validate, pipeline.schedule, pipeline.lower, pipeline.export, pipeline.clean_up):
        step(plan, opts)
    return plan


def test_a_tolerance_tighter_than_float_arithmetic_is_the_tolerance_not_a_bug(exported):
    with pytest.raises(VerificationError) as caught:
        pipeline.verify_plan(exported, CompileOptions(tolerance=1e-12))
    message = str(caught.value)
    assert message.startswith("verification failed") and "loosen --tolerance" in message
    assert "compiler bug" not in message and len(message.splitlines()) == 1


def test_the_default_tolerance_passes_and_checks_the_batches_asked_for(exported):
    pipeline.verify_plan(exported, CompileOptions(verify_batches=(3, 4)))
    ver = exported.report["verification"]
    assert ver["passed"] and ver["batches"] == [3, 4]
    assert {c["batch"] for c in ver["checks"]} == {3, 4}  # what was asked for, no silent batch 1


def _check(error, scale, output="t"):
    return OutputCheck(1, output, WHAT, error * scale if scale else error, scale)


@pytest.mark.parametrize("checks,tolerance,says,never", [
    ([_check(3e-2, 2.0)], DEFAULT_TOLERANCE, "this is a compiler bug", "loosen"),
    ([_check(3e-2, 2.0)], 1e-8, "this is a compiler bug", "loosen"),  # beyond the default too
    ([_check(3e-6, 2.0)], 1e-8, "loosen --tolerance", "compiler bug"),
    ([_check(3e-2, 2.0), _check(float("nan"), float("nan"), "base")], DEFAULT_TOLERANCE,
     "the reference for output 'base' at batch 1 (task t as its own full model, in PyTorch) is not finite",
     "compiler bug"),
    ([_check(1e-7, 0.0)], DEFAULT_TOLERANCE, "is all zeros", "compiler bug"),
])
def test_the_message_says_whose_failure_it_is(checks, tolerance, says, never):
    message = _failure(checks, [], tolerance)
    assert says in message and never not in message


def test_broken_exact_properties_are_compiler_bugs_whatever_the_tolerance():
    message = _failure([], ["output 'a' at batch 1 under the mask 'none' holds values in rows [0]"], 1.0)
    assert "holds values in rows [0]" in message and "this is a compiler bug" in message
