"""The compiler, top to bottom: base file + task deltas -> one verified multi-task ONNX graph.

    validate   the files fit together (fingerprints, block ranges, shapes, names)
    prune      (--prune only) remove channels inside each task's tuned blocks (subtune/pruning)
    schedule   fork / block / merge / split order for the task ranges
    lower      one PyTorch module running that schedule (--task-select: each task on the rows
               that ask for it, lower.py's TaskSelectModel)
    export     torch.export -> ONNX (onnx-ir), dynamic batch
    clean up   ONNX passes: stream roles, (--task-select) the row indices computed from the
               `tasks` mask, readable stream-node names, the batch dimension named `batch`,
               no exporter debris, metadata
    verify     ONNX Runtime vs PyTorch eager at the verification batch sizes (default 1 and 5;
               --task-select: under several masks each); a graph over 2 GiB is verified from a
               temporary file with external data
    check      TensorRT parser compatibility (static, runs everywhere; after verification, so
               a CPU-only user sees their graph verified first; --no-tensorrt-check skips it)
  with --precision fp16/int8 (subtune/quantization):
    load calibration data   right after validate, so a bad --calibration fails before the slow steps
    quantize   INT8 in QDQ form with the base's ranges pinned, or FP16; INT8 that misses a target on
               held-out images gets layer sensitivity and fp32 fallback until each output meets it
    verify precision        the reduced graph vs the fp32 graph on held-out images (the data's test
                            split), reusing the runs quantize made on them
    check      TensorRT parser compatibility again, QDQ placement included
  and last:
    record verification     `subtune.verified` (and what was checked) in the ONNX metadata

Each step declares the Plan fields it reads, writes and may read (`Step`); `compile_plan` runs
them in order, refuses a step whose inputs no earlier step wrote (so a partial pipeline
(`until=`) or a hand-filled Plan fails at the step that lacks something, by name), and shows each
step only what it declares (StepView): a step that touches another field fails, naming it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import TYPE_CHECKING, Callable

import onnx_ir as ir
import torch

from subtune.compiler.export import export_onnx, needs_external_data, onnx_bytes, weights_on_disk
from subtune.compiler.lower import MultiTaskModel, TaskSelectModel
from subtune.compiler.memory import peak_rss_mib, return_freed_memory
from subtune.compiler.plan import Plan
from subtune.compiler.schedule import Fork, schedule_streams
from subtune.compiler.verify import MASKS, checks_to_json, verify
from subtune.delta import check_preprocess, validate_task
from subtune import graph_metadata
from subtune.errors import SubtuneError, VerificationError
from subtune.passes import (AttachMetadataPass, CheckTensorRTCompatPass, NameBatchDimPass, NameStreamNodesPass,
                            RecordStreamRolesPass, StripExportMetadataPass, TaskRowsFromMaskPass)
from subtune.passes.record_stream_roles import rows_role
from subtune.passes.task_rows_from_mask import MASK_INPUT
from subtune.version import __version__

if TYPE_CHECKING:
    from subtune.pruning.plan import PruneOptions
    from subtune.quantization import PrecisionOptions


@dataclass
class CompileOptions:
    verify: bool = True
    verify_batches: tuple[int, ...] = (1, 5)
    tolerance: float = 1e-4
    seed: int = 0
    check_tensorrt: bool = True
    on_step: object = field(default=None)  # callable(step_name) for progress display
    prune: "PruneOptions | None" = None  # prune the channels inside every task's tuned blocks
    precision: "PrecisionOptions | None" = None  # fp16/int8 after the fp32 graph verifies; None: fp32 only
    # A second input `tasks` ([batch, k] bool): each image computes the base plus only the tasks it asks
    # for; a task's output is NaN in the rows that did not ask for it (lower.py, TaskSelectModel)
    task_select: bool = False
    # Fold the task blocks' BatchNorms into their convolutions while lowering (compiler/fold.py): the
    # graph is the same (the ONNX optimizer folds what is left), and each task's weights are in
    # memory once. False keeps the lowered module as the tasks define it (the torch benchmarks).
    fold_batch_norm: bool = True


@dataclass(frozen=True)
class Step:
    """One step of the pipeline and its contract with the Plan: the fields it needs filled in
    (`reads`), the fields it fills in (`writes`), and the fields it may look at that can be unset
    (`may_read`: settings the caller may leave None, results an earlier step may not have made).
    Every step may add to `plan.report`. The step sees the Plan through a view that holds it to
    this contract (StepView): touching any other field fails at once, naming the step and the field."""

    name: str
    run: Callable[[Plan, "CompileOptions"], None]
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    may_read: tuple[str, ...] = ()
    may_write: tuple[str, ...] = ()  # written, possibly as None (int8's base-only graph; fp16 has none)

    def missing(self, plan: Plan) -> list[str]:
        return [f for f in self.reads if getattr(plan, f) is None]

    @cached_property
    def visible(self) -> frozenset[str]:
        return frozenset((*self.reads, *self.writes, *self.may_read, *self.may_write, "report"))


class StepContractError(RuntimeError):
    """A compile step touched a Plan field its declaration does not name: a bug in subtune."""


_PLAN_FIELDS = frozenset(f.name for f in fields(Plan))


class StepView:
    """The Plan as one step sees it: the fields it declares (reads, writes, may_read, may_write,
    and the report), nothing else. Properties of the Plan (output_names) are computed through the view, so
    they count as reads of the fields they use."""

    def __init__(self, plan: Plan, step: Step):
        object.__setattr__(self, "_plan", plan)
        object.__setattr__(self, "_step", step)

    def __getattr__(self, name: str):
        step: Step = object.__getattribute__(self, "_step")
        plan: Plan = object.__getattribute__(self, "_plan")
        prop = getattr(type(plan), name, None)
        if isinstance(prop, property):
            return prop.fget(self)
        if name in _PLAN_FIELDS and name not in step.visible:
            raise StepContractError(f"internal error: compile step {step.name!r} read plan.{name}, which its "
                                    f"declaration does not name (reads {list(step.reads)}, writes {list(step.writes)}, "
                                    f"may_read {list(step.may_read)}, may_write {list(step.may_write)})")
        return getattr(plan, name)

    def __setattr__(self, name: str, value) -> None:
        step: Step = object.__getattribute__(self, "_step")
        if name not in (*step.writes, *step.may_write):
            raise StepContractError(f"internal error: compile step {step.name!r} wrote plan.{name}, which its "
                                    f"declaration does not name (writes {list(step.writes)}, may_write "
                                    f"{list(step.may_write)})")
        setattr(object.__getattribute__(self, "_plan"), name, value)


def compile_plan(plan: Plan, options: CompileOptions | None = None, until: str | None = None) -> Plan:
    """Run the pipeline's steps on `plan`, each through a StepView that holds it to its declared
    contract; with `until`, stop after the step of that name (e.g. "lower" for the PyTorch module
    alone, as the benchmarks' torch runtime wants)."""
    options = options or CompileOptions()
    chosen = list(steps(options))
    if until is not None:
        names = [s.name for s in chosen]
        if until not in names:
            raise SubtuneError(f"until={until!r}: expected one of this pipeline's steps ({', '.join(names)})")
        chosen = chosen[:names.index(until) + 1]
    timings = plan.report.setdefault("seconds", {})
    for step in chosen:
        missing = step.missing(plan)
        if missing:
            raise SubtuneError(f"compile step {step.name!r} reads plan.{', plan.'.join(missing)}, which no earlier step "
                               "filled in: run the pipeline from its start (compile_plan) or fill them in first")
        if options.on_step:
            options.on_step(step.name)
        start = time.perf_counter()
        step.run(StepView(plan, step), options)
        timings[step.name] = round(time.perf_counter() - start, 3)
        if (peak := peak_rss_mib()) is not None:
            plan.report.setdefault("peak_rss_mib", {})[step.name] = peak
        unset = [f for f in step.writes if getattr(plan, f) is None]
        if unset:
            raise RuntimeError(f"internal error: compile step {step.name!r} left plan.{', plan.'.join(unset)} unset")
    return plan


def steps(options: CompileOptions):
    """The pipeline for these options, in order (Step: name, run(plan, options) and its contract)."""
    reduced = options.precision
    yield Step("validate", validate, ("base", "tasks"), ("backbone", "input_size"))
    if reduced:  # early, so a bad --calibration fails before the slow steps
        yield Step("load calibration data", load_calibration, ("base", "backbone", "tasks", "input_size"),
                   ("calibration",))
    if options.prune is not None:
        yield Step("prune", prune, ("base", "backbone", "tasks", "input_size"), ("tasks",))
    yield Step("schedule", schedule, ("tasks", "backbone"), ("schedule",))
    yield Step("lower", lower, ("base", "tasks", "schedule"), ("module", "backbone"))
    yield Step("export", export, ("module", "input_size", "tasks", "export_batch"), ("onnx",))
    yield Step("clean up", clean_up, ("onnx", "module", "schedule", "tasks", "base", "input_size"), ("onnx",))
    if options.verify:
        yield Step("verify", verify_plan, ("onnx", "base", "tasks", "input_size", "export_batch", "module"),
                   ("module",), may_read=("scratch_dir",))
    if options.check_tensorrt:
        yield Step("check TensorRT compatibility", check_tensorrt, ("onnx",))
    if reduced:
        yield Step("quantize", quantize, ("onnx", "calibration", "tasks"), ("onnx", "fp32_onnx"),
                   may_write=("base_only_onnx",))
        if options.verify:
            yield Step("verify precision", verify_precision, ("onnx", "fp32_onnx", "calibration", "tasks"),
                       may_read=("base_only_onnx", "scratch_dir"))
        if options.check_tensorrt and reduced.tensorrt_compatible:
            yield Step(f"check TensorRT compatibility ({reduced.precision})", check_tensorrt, ("onnx",))
    yield Step("record verification", record_verification, ("onnx",), ("onnx",))


def validate(plan: Plan, options: CompileOptions) -> None:
    _, plan.backbone = plan.base.build()
    seen: dict[str, str] = {}
    for task in plan.tasks:
        validate_task(task, plan.base, plan.backbone)
        check_preprocess(task.meta, task.path or task.name)  # load_task did for files; tasks made in code too
        if task.name in seen:
            raise SubtuneError(f"two tasks are named {task.name!r} ({seen[task.name]} and {task.path}): "
                               "output names must be unique; rename one")
        seen[task.name] = task.path or task.name
    if options.task_select:
        if MASK_INPUT in seen:
            raise SubtuneError(f"a task is named {MASK_INPUT!r}, the name of a --task-select graph's mask input: "
                               "rename the task")
        if not plan.tasks:
            raise SubtuneError("--task-select needs at least one task: a graph of the base alone has nothing to select")
    plan.input_size = plan.input_size or _input_size(plan)


def _input_size(plan: Plan) -> tuple[int, int]:
    sizes = {tuple(t.meta["preprocess"]["image_size"]) for t in plan.tasks if t.meta.get("preprocess")}
    if len(sizes) > 1:
        raise SubtuneError(f"tasks were trained at different image sizes {sorted(sizes)}: one graph takes one size; "
                           "retrain or pass --image-size")
    return tuple(int(x) for x in sizes.pop()) if sizes else plan.base.input_size


def prune(plan: Plan, options: CompileOptions) -> None:
    """Prune every task that is not pruned yet (subtune/pruning); no recovery training here."""
    from subtune.pruning.prune import prune_task
    from subtune.delta.pruned import pruned_blocks

    report: dict[str, object] = {}
    for i, task in enumerate(plan.tasks):
        if task.taps is not None:
            report[task.name] = "tap task (no blocks): nothing to prune"
            continue
        if pruned_blocks(task.meta):
            report[task.name] = "already pruned: kept as it is"
            continue
        result = prune_task(task, plan.base, options.prune, backbone=plan.backbone, input_size=plan.input_size)
        plan.tasks[i] = result.task
        report[task.name] = result.report
    plan.report["pruning"] = {"options": options.prune.to_json(), "tasks": report}


def schedule(plan: Plan, options: CompileOptions) -> None:
    plan.schedule = schedule_streams([(t.first, t.last) for t in plan.tasks], plan.backbone.num_blocks)
    plan.report["schedule"] = plan.schedule.describe()


def lower(plan: Plan, options: CompileOptions) -> None:
    base_model, backbone = plan.base.build()  # a fresh copy: the module owns it
    plan.backbone = backbone
    lowering = TaskSelectModel if options.task_select else MultiTaskModel
    plan.module = lowering(base_model, backbone, plan.tasks, plan.schedule,
                           fold_batch_norm=options.fold_batch_norm).eval()


def export(plan: Plan, options: CompileOptions) -> None:
    example = torch.randn(plan.export_batch, 3, *plan.input_size, generator=torch.Generator().manual_seed(0))
    plan.onnx = export_onnx(plan.module, example, plan.output_names,
                            index_inputs=getattr(plan.module, "index_inputs", ()))


def clean_up(plan: Plan, options: CompileOptions) -> None:
    forks = {s.task: f"fork_{plan.tasks[s.task].name}_before_block{s.block}"
             for s in plan.schedule.steps if isinstance(s, Fork)}
    index_inputs = list(getattr(plan.module, "index_inputs", ()))
    names = [t.name for t in plan.tasks] if index_inputs else []
    passes = ir.passes.Sequential(
        # what quantisation reads; needs the exporter's scopes
        RecordStreamRolesPass(plan.module.stream_roles(), plan.module.input_roles()),
        TaskRowsFromMaskPass(index_inputs, names, [rows_role(n) for n in names]),  # no-op without --task-select
        NameStreamNodesPass(forks),
        NameBatchDimPass(),
        StripExportMetadataPass(),
        AttachMetadataPass(_metadata(plan, options)),
    )
    plan.onnx = passes(plan.onnx).model
    if needs_external_data(plan.onnx):
        plan.report["external_data"] = True  # --precision: quantised from a file (subtune/quantization/files.py)


def _metadata(plan: Plan, options: CompileOptions) -> dict[str, object]:
    meta: dict[str, object] = {
        "subtune.version": __version__,
        "subtune.arch": plan.base.arch,
        "subtune.base_fingerprint": plan.base.fingerprint,
        "subtune.input_size": list(plan.input_size),
        "subtune.outputs": plan.output_names,
        "subtune.verified": False,  # until record_verification says otherwise
        "subtune.tasks": [{"name": t.name, "blocks": [t.first, t.last] if t.blocks else [], "siamese": t.siamese,
                           "classes": t.classes, "num_classes": t.num_classes, "kind": t.kind,
                           **({"tap_points": t.tap_points} if t.taps is not None else {})} for t in plan.tasks],
    }
    pre = {t.name: t.meta["preprocess"] for t in plan.tasks if "preprocess" in t.meta}
    if pre:
        meta["subtune.preprocess"] = pre
    pruned = {t.name: _pruning_summary(t.meta["pruned"].get("report", {})) for t in plan.tasks
              if isinstance(t.meta.get("pruned"), dict)}
    if pruned:
        meta["subtune.pruning"] = pruned
    if options.task_select:
        meta["subtune.task_select"] = plan.report["task_select"] = {
            "input": MASK_INPUT, "dtype": "bool", "columns": [t.name for t in plan.tasks], "fill": "NaN"}  # lower.FILL
    return graph_metadata.encode(meta, complete=True)


def _pruning_summary(report: dict) -> dict[str, object]:
    """What a service may want to know of a pruned task; the per-layer channel counts stay in the
    compile report and the task file."""
    return {k: report[k] for k in ("options", "params", "flops", "params_kept", "flops_kept") if k in report}


def check_tensorrt(plan: Plan, options: CompileOptions) -> None:
    CheckTensorRTCompatPass(raise_on_error=True)(plan.onnx)
    plan.report["tensorrt_compatible"] = True


def verify_plan(plan: Plan, options: CompileOptions) -> None:
    base_model, backbone = plan.base.build()
    batches = tuple(options.verify_batches)
    if all(b == plan.export_batch for b in batches):
        raise SubtuneError(f"verify at a batch size other than the export's ({plan.export_batch})")
    record: dict[str, object] = {"tolerance": options.tolerance, "batches": list(batches)}
    if options.task_select:
        record["task_select"] = {
            "masks": list(MASKS),
            "checked": ["each selected (image, task) output against the task alone, within the tolerance",
                        "the base against the base alone, within the tolerance, and bit for bit the same under every mask",
                        "NaN in a task's output exactly where its column of the mask is false"]}
    try:
        # ONNX Runtime loads the graph from a file while plan.onnx's weights wait on disk, and the lowered
        # module, whose tensors the exported graph shared, gives its weights up (it keeps its structure, on
        # the meta device): the runtime's copy is the only one in memory (a 100-task graph has 3 GB)
        with weights_on_disk(plan.onnx, plan.scratch_dir) as path:
            plan.module = plan.module.to("meta") if plan.module is not None else None
            return_freed_memory()
            checks = verify(path, base_model, backbone, plan.tasks, plan.output_names, input_size=plan.input_size,
                            batches=batches, tolerance=options.tolerance, seed=options.seed,
                            task_select=options.task_select)
    except VerificationError as e:  # the report keeps the failing table
        plan.report["verification"] = {**record, "passed": False, "error": str(e),
                                       "checks": checks_to_json(getattr(e, "checks", []), options.tolerance)}
        raise
    plan.report["verification"] = {**record, "passed": True, "checks": checks_to_json(checks)}


def record_verification(plan: Plan, options: CompileOptions) -> None:
    """Mark the graph as verified or not, so a file compiled with --no-verify says so itself."""
    ver = plan.report.get("verification")
    precision = plan.report.get("precision")
    verified = bool(ver and ver.get("passed")) and (precision is None or "verification" in precision)
    meta: dict[str, object] = {"subtune.verified": verified}
    if ver and ver.get("passed"):
        meta["subtune.verification"] = {
            "runtime": "ONNX Runtime CPU", "reference": "PyTorch eager, each task as its own full model",
            # no measured errors here: they vary in the last bits across CPUs, and the same inputs
            # must compile to the same bytes anywhere (the report has them)
            "tolerance": ver["tolerance"], "batches": ver["batches"], "measure": "max |error| / max |reference|",
            **({"masks": ver["task_select"]["masks"]} if "task_select" in ver else {}),
            **({"precision": precision["precision"], "precision_checked": "verification" in precision}
               if precision else {})}
    plan.onnx = AttachMetadataPass(graph_metadata.encode(meta))(plan.onnx).model
    graph_metadata.decode(plan.onnx.metadata_props, "the compiled graph")  # the whole set, as every reader checks it


def load_calibration(plan: Plan, options: CompileOptions) -> None:
    plan.calibration = options.precision.calibration_set(plan.base.arch, plan.backbone.model, plan.tasks,
                                                         plan.input_size)


def quantize(plan: Plan, options: CompileOptions) -> None:
    from subtune.quantization import reduce_precision

    reduced = reduce_precision(plan.onnx, options.precision, plan.calibration, plan.tasks)
    plan.fp32_onnx, plan.onnx, plan.base_only_onnx = plan.onnx, reduced.model, reduced.base_only
    plan.report["precision"] = reduced.report
    if not options.precision.tensorrt_compatible:
        plan.report["tensorrt_compatible"] = False  # the fp32 graph was; this one is for ONNX Runtime on x86


def verify_precision(plan: Plan, options: CompileOptions) -> None:
    from subtune.quantization import verify_reduced

    with contextlib.ExitStack() as stack:
        def loadable(graph: ir.Model | None):  # a graph over 2 GiB is checked from a temporary file
            if graph is None:
                return None
            if not needs_external_data(graph):
                return onnx_bytes(graph)
            return stack.enter_context(weights_on_disk(graph, plan.scratch_dir))

        plan.report["precision"]["verification"] = verify_reduced(
            loadable(plan.fp32_onnx), loadable(plan.onnx), loadable(plan.base_only_onnx), plan.calibration,
            plan.output_names, plan.tasks, options.precision)
    if options.precision.sensitivity_plot and "mixed" in plan.report["precision"]:
        from subtune.quantization.plot import plot_sensitivity

        plot_sensitivity(plan.report["precision"], options.precision.sensitivity_plot)


def serialize(plan: Plan) -> bytes:
    """The graph as one ONNX message (a graph over 2 GiB raises: save it with `save_onnx`)."""
    return onnx_bytes(plan.onnx)
