"""End to end: compile, then ONNX Runtime vs PyTorch eager at batch 1 and 5 (verification is
part of compile_plan and raises on any output beyond 1e-4 relative)."""

import numpy as np
import onnx
import pytest

from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
from subtune.compiler.plan import Plan
from subtune.errors import SubtuneError
from subtune.models import make_base
from subtune.runtimes.onnxruntime import session_from_bytes
from subtune.synthetic import synthetic_task

# Acceptance: each architecture with four tasks (overlapping, disjoint, ending at the last
# block, Siamese), verified at batch 1 and 5. Small inputs keep it fast; block structure is full.
ARCHS = [
    ("torchvision:resnet18", {}, (32, 32), {"a": [2, 3], "b": [3, 4, 5], "c": [7, 8], "s": [5, 6]}),
    ("torchvision:resnet50", {}, (64, 64), {"a": [13, 14], "b": [14, 15], "c": [15, 16], "s": [4, 5]}),
    ("torchvision:vit_b_16", {"image_size": 32}, (32, 32), {"a": [2, 3], "b": [3, 4, 5], "c": [11, 12], "s": [6]}),
    ("timm:efficientnet_lite0", {}, (64, 64), {"a": [5, 6], "b": [6, 7, 8], "c": [15, 16], "s": [12, 13]}),
]


def _compile(arch, kwargs, size, specs, **opts):
    base = make_base(arch, kwargs, seed=0)
    _, bb = base.build()
    tasks = [synthetic_task(base, n, b, seed=i, siamese=n == "s", backbone=bb) for i, (n, b) in enumerate(specs.items())]
    plan = Plan(base, tasks, input_size=size)
    return compile_plan(plan, CompileOptions(**opts))


@pytest.mark.parametrize("arch,kwargs,size,specs", ARCHS, ids=[a[0] for a in ARCHS])
def test_four_tasks_verify_at_batch_1_and_5(arch, kwargs, size, specs):
    plan = _compile(arch, kwargs, size, specs)
    checks = plan.report["verification"]["checks"]
    assert {c["batch"] for c in checks} == {1, 5}
    assert {c["output"] for c in checks} == {"base", *specs}
    assert max(c["relative_error"] for c in checks) <= 1e-4
    names = [n.name for n in plan.onnx.graph]
    assert any(n.startswith("merge_after_block") for n in names)  # overlapping/disjoint ranges merge back
    assert any(n.startswith("split_heads/") for n in names)
    assert plan.report["tensorrt_compatible"]


@pytest.fixture(scope="module")
def tiny_plans():
    specs = {"a": [2, 3], "b": [4, 5, 6], "c": [7, 8], "s": [5, 6]}
    base = make_base("subtune:tiny_resnet", {}, seed=0)
    _, bb = base.build()
    tasks = [synthetic_task(base, n, b, seed=i, siamese=n == "s", backbone=bb) for i, (n, b) in enumerate(specs.items())]
    opts = CompileOptions(verify=False)
    alone = compile_plan(Plan(base, [], input_size=(32, 32)), opts)
    both = [compile_plan(Plan(base, tasks, input_size=(32, 32)), opts) for _ in range(2)]
    return alone, both


def test_same_inputs_compile_to_identical_bytes(tiny_plans):
    _, (first, second) = tiny_plans
    assert serialize(first) == serialize(second)


def test_adding_tasks_does_not_move_the_base_output(tiny_plans):
    alone, (with_tasks, _) = tiny_plans
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    (a,) = session_from_bytes(serialize(alone)).run(["base"], {"images": x})
    (b,) = session_from_bytes(serialize(with_tasks)).run(["base"], {"images": x})
    assert np.abs(a - b).max() / np.abs(a).max() <= 1e-4


def test_zero_tasks_is_the_base_graph(tiny_plans):
    alone, _ = tiny_plans
    assert [v.name for v in alone.onnx.graph.outputs] == ["base"]


def test_metadata_records_tasks_and_fingerprint(tiny_plans):
    _, (plan, _) = tiny_plans
    model = onnx.load_from_string(serialize(plan))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["subtune.base_fingerprint"] == plan.base.fingerprint
    assert '"blocks": [4, 6]' in meta["subtune.tasks"] and "subtune.version" in meta
    assert [o.name for o in model.graph.output] == ["base", "a", "b", "c", "s"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_duplicate_task_names_are_refused():
    base = make_base("subtune:tiny_resnet", {}, seed=0)
    tasks = [synthetic_task(base, "same", [2]), synthetic_task(base, "same", [3])]
    with pytest.raises(SubtuneError, match="two tasks are named 'same'"):
        compile_plan(Plan(base, tasks, input_size=(32, 32)), CompileOptions(verify=False))


def test_verification_catches_a_wrong_graph():
    """Scale one task weight of the exported graph by 1.01: verification must fail on that task."""
    from subtune.compiler import pipeline
    from subtune.errors import VerificationError

    base = make_base("subtune:tiny_resnet", {}, seed=0)
    plan = Plan(base, [synthetic_task(base, "t", [4])], input_size=(32, 32))
    opts = CompileOptions()
    for step in (pipeline.validate, pipeline.schedule, pipeline.lower, pipeline.export, pipeline.clean_up):
        step(plan, opts)
    import onnx_ir as ir

    init = plan.onnx.graph.initializers["tasks.0.blocks.0.conv2.weight"]
    init.const_value = ir.Tensor(init.const_value.numpy() * 1.01, name=init.name)
    with pytest.raises(VerificationError, match="output 't'.*this is a compiler bug"):
        pipeline.verify_plan(plan, opts)


@pytest.mark.parametrize("verify,prune,precision,trt", [(True, False, None, True), (False, True, "int8", True),
                                                         (True, True, "fp16", False), (True, False, "int8", False)])
def test_every_step_reads_only_what_an_earlier_step_wrote(verify, prune, precision, trt):
    """The steps' declared contracts chain: each step's inputs are the Plan's own inputs or an
    earlier step's outputs, for every shape the pipeline takes."""
    from subtune.compiler.pipeline import steps
    from subtune.pruning.plan import PruneOptions
    from subtune.quantization import PrecisionOptions

    options = CompileOptions(verify=verify, check_tensorrt=trt, prune=PruneOptions(0.5) if prune else None,
                             precision=PrecisionOptions(precision, "fashion-mnist") if precision else None)
    filled = {"base", "tasks"}  # what a Plan is made with (input_size may be given too, or not)
    for step in steps(options):
        assert set(step.reads) <= filled, f"{step.name} reads {set(step.reads) - filled} before any step writes it"
        filled |= set(step.writes)
    assert "onnx" in filled


def test_a_step_whose_inputs_are_missing_is_refused_by_name():
    """compile_plan checks each step's declared inputs before running it (here: export before lower)."""
    from subtune.compiler.pipeline import Step, export

    base = make_base("subtune:tiny_resnet", {}, seed=0)
    plan = compile_plan(Plan(base, [synthetic_task(base, "t", [7])], input_size=(16, 16)), until="schedule")
    assert plan.schedule is not None and plan.module is None and plan.onnx is None
    assert Step("export", export, ("module", "input_size"), ("onnx",)).missing(plan) == ["module"]
    lowered = compile_plan(plan, CompileOptions(verify=False), until="lower")  # reruns validate and schedule
    assert lowered.module is not None and lowered.onnx is None
    with pytest.raises(SubtuneError, match=r"compile step 'validate' reads plan\.base, which no earlier step"):
        compile_plan(Plan(None, []))
