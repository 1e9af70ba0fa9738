"""`subtune.compile`: what `subtune-compile` does, as one function that takes paths or loaded
objects and returns a result.

Everything is written atomically (a temporary file renamed into place): a failed compile
leaves no model behind. A failed verification still writes the report, with the failing table.
Progress and what was written are logged on the "subtune" logger; nothing is printed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from subtune.api._common import _batches, _image_size, _load_base, _load_task, _same_file, _where
from subtune.errors import SubtuneError, VerificationError

if TYPE_CHECKING:
    from subtune.compiler.plan import Plan
    from subtune.delta import TaskDelta
    from subtune.models import BaseModel
    from subtune.pruning.plan import PruneOptions
    from subtune.quantization import PrecisionOptions

log = logging.getLogger("subtune")

ENGINE_SUFFIXES = (".plan", ".engine")
# TensorRT engine vs the verified ONNX graph in ONNX Runtime, max error relative to each output's
# scale, by the graph's precision. fp32 engines are built without TF32 (Polygraphy's default).
# UNRUN: no TensorRT where this was written; these are bounds, not measurements.
ENGINE_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 5e-2}
DEFAULT_BATCH_RANGE = (1, 8, 32)  # the engine's batch profile: MIN, OPT, MAX


@dataclass
class CompileResult:
    """What `compile` wrote and found."""

    output: Path  # the model: the .onnx, or the TensorRT engine
    files: list[Path]  # every file written, the output first (external data, the .onnx beside an engine, the report)
    report: dict[str, Any]  # what the JSON report holds
    report_path: Path | None  # None when no report was asked for
    # The compiler's state (the onnx-ir graph in plan.onnx, the models, the tasks: gigabytes for a
    # large model), kept only when compile(..., keep_plan=True); None otherwise.
    plan: "Plan | None" = field(default=None, repr=False)

    @property
    def outputs(self) -> list[str]:
        return list(self.report["outputs"])

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the graph's input `images`."""
        return tuple(self.report["input_size"])

    @property
    def verified(self) -> bool:
        return bool(self.report.get("verification", {}).get("passed"))

    @property
    def bytes(self) -> int:
        return int(self.report["bytes"])


def compile(base: "str | os.PathLike | BaseModel", tasks: "Sequence[str | os.PathLike | TaskDelta]" = (),
            output: str | os.PathLike | None = None, *, verify: bool = True,
            verify_batches: Sequence[int] = (1, 5), tolerance: float = 1e-4,
            image_size: int | tuple[int, int] | None = None, report: bool | str | os.PathLike = True,
            prune: "float | PruneOptions | None" = None, precision: "PrecisionOptions | None" = None,
            check_tensorrt: bool = True, external_data: bool | None = None,
            batch_range: tuple[int, int, int] | None = None, engine_tolerance: float | None = None,
            task_select: bool = False, progress: bool = False,
            keep_plan: bool = False) -> CompileResult:
    """Compile a base and task deltas into one multi-task graph at `output`.

    base, tasks: file paths or objects from `subtune.formats` (load_base/make_base,
        load_task/make_task); the outputs are `base`, then the tasks in this order.
    output: `model.onnx` (ONNX Runtime, the CPU path), or `engine.plan`/`.engine` (TensorRT,
        needs TensorRT and a GPU: the verified graph is also written beside it as `engine.onnx`,
        and the engine is run against it at the verification batch sizes before it is kept).
    verify: check the graph in ONNX Runtime against PyTorch eager at `verify_batches`, within
        `tolerance` (max |error| / max |reference| per output); False marks the file unverified
        (`subtune.verified` = false in its metadata).
    report: True writes `<output stem>.report.json` beside the output; a path writes it there;
        False writes none.
    external_data: None writes `model.onnx.data` beside the model only when the weights need it
        (over 2 GiB); True/False force it.
    prune, precision: see `subtune prune` / `--precision` (PruneOptions, PrecisionOptions);
        a float prune is the fraction of channels to remove.
    check_tensorrt: the static TensorRT-compatibility check, after verification.
    task_select: give the graph a second input `tasks` (bool [batch, k], one column per task in
        output order) so that each image computes the base plus only the tasks it asks for; a
        task's output is NaN in the rows that did not ask for it (docs/task-selection.md; run it
        with subtune.load_graph). ONNX output only for now.
    batch_range: (MIN, OPT, MAX) batch of the TensorRT engine's profile (default (1, 8, 32));
        engine outputs only: an .onnx graph takes any batch, so it is refused there.
    keep_plan: keep the compiler's state in `result.plan` (the onnx-ir graph, the models; it can
        take gigabytes); by default it is released when compile returns.

    The options passed in are not changed (`precision` is resolved into a new object, recorded in
    the report). Parameters that cannot work are refused before any work: for instance int8 in
    `int8_target` cpu form for an engine, which TensorRT would refuse only inside its build.
    """
    if output is None:
        raise SubtuneError("compile needs an output path: model.onnx, or engine.plan for TensorRT")
    from subtune.atomic import check_writable
    from subtune.compiler.export import external_data_path

    from subtune.delta import TaskDelta

    tasks = [tasks] if isinstance(tasks, (str, os.PathLike, TaskDelta)) else list(tasks)  # one task, or a list
    out = check_writable(output)
    engine = out.suffix in ENGINE_SUFFIXES
    if out.suffix != ".onnx" and not engine:
        raise SubtuneError(f"output {out}: expected a .onnx file, or .plan/.engine for TensorRT")
    if task_select and engine:
        raise SubtuneError(f"task selection is built for ONNX Runtime for now, not TensorRT engines ({out}): "
                           "write -o model.onnx")
    onnx_path = out.with_suffix(".onnx") if engine else out
    report_path = None if report is False else out.with_suffix(".report.json") if report is True else Path(report)
    written = [out, onnx_path, external_data_path(onnx_path)] if engine else [out, external_data_path(out)]
    if report_path is not None:
        check_writable(report_path)
        clash = next((p for p in written if _same_file(p, report_path)), None)
        if clash is not None:
            raise SubtuneError(f"`report` {report_path} is the same file as the model output {clash}: "
                               "choose another report path")
    batches = _batches(verify_batches, "`verify_batches`")
    size = _image_size(image_size)
    if batch_range is not None and not engine:
        raise SubtuneError(f"`batch_range` sets a TensorRT engine's batch profile; {out} is an ONNX graph, which takes "
                           "any batch size: drop it, or write an engine (.plan)")
    prune_options = _prune_options(prune)
    if precision is not None:
        precision = precision.check(engine=engine)  # a new object: auto becomes the tensorrt form for engines
    if engine:
        from subtune.runtimes.tensorrt import check_batch_range, tensorrt_unavailable_reason

        batch_range = check_batch_range(batch_range if batch_range is not None else DEFAULT_BATCH_RANGE)
        if reason := tensorrt_unavailable_reason():
            raise SubtuneError(f"cannot build {out}: {reason}; use -o model.onnx for the CPU path (ONNX Runtime)")

    from subtune.compiler.pipeline import CompileOptions
    from subtune.compiler.plan import Plan

    base_model = _load_base(base)
    # Task files are mapped, not read: the compiler reads one task at a time and gives the memory back
    task_list = [_load_task(t, mmap=True) for t in tasks]
    plan = Plan(base_model, task_list, input_size=size, scratch_dir=str(onnx_path.parent))
    options = CompileOptions(verify=verify, verify_batches=batches, tolerance=tolerance, prune=prune_options,
                             precision=precision, check_tensorrt=check_tensorrt, task_select=bool(task_select))
    try:
        _run_pipeline(plan, options, progress, len(task_list))
    except VerificationError as e:
        _failure_report(e, report_path, plan, base, tasks)
        raise

    if engine:
        try:
            files, engine_report = _write_engine(plan, out, onnx_path, batch_range, batches, external_data,
                                                 engine_tolerance, precision)
        except VerificationError as e:  # the engine differs from the verified graph: neither file kept
            plan.report["engine"] = {"comparison": {"passed": False, "checks": getattr(e, "checks", [])}}
            _failure_report(e, report_path, plan, base, tasks)
            raise
    else:
        from subtune.compiler.export import save_onnx

        files, engine_report = save_onnx(plan.onnx, out, external_data=external_data), None
    result_report = {"output": str(out), "bytes": out.stat().st_size, "files": [str(f) for f in files],
                     **_describe(plan, base, tasks), **plan.report}
    if engine_report:
        result_report["engine"] = engine_report
    if report_path is not None:
        from subtune.atomic import write_text

        write_text(report_path, json.dumps(result_report, indent=2))
        files.append(report_path)
    log.info("wrote %s", ", ".join(str(f) for f in files))
    return CompileResult(out, files, result_report, report_path, plan if keep_plan else None)


# --------------------------------------------------------------------------- helpers


def _failure_report(error: VerificationError, report_path: Path | None, plan, base, tasks) -> None:
    """A failed check still leaves its report (with the failing table), and no model."""
    if report_path is None or not plan.report:
        return
    from subtune.atomic import write_text

    write_text(report_path, json.dumps({"output": None, "error": str(error), **_describe(plan, base, tasks),
                                        **plan.report}, indent=2))
    log.info("a check failed: wrote the report %s and no model", report_path)
    error.report_path = report_path  # for the command line's message


def _run_pipeline(plan, options, progress: bool, n_tasks: int) -> None:
    from subtune.compiler.pipeline import compile_plan

    if not progress:
        options.on_step = lambda name: log.debug("compile step: %s", name)
        compile_plan(plan, options)
        return
    from subtune.progress import StepProgress

    with StepProgress(f"compiling {n_tasks} task(s)") as bar:
        options.on_step = bar.step
        compile_plan(plan, options)


def _write_engine(plan, out: Path, onnx_path: Path, batch_range, batches, external_data, engine_tolerance, precision):
    """The verified ONNX beside the engine (TensorRT parses it from there), then the engine, run
    against the ONNX in ONNX Runtime before either file is kept."""
    from subtune.atomic import atomic_files, atomic_path
    from subtune.compiler.export import external_data_path, needs_external_data, write_onnx
    from subtune.runtimes.tensorrt import build_engine, compare_engine, onnx_graph_sha256, record_engine

    lo, _, hi = batch_range
    compare_at = tuple(b for b in batches if lo <= b <= hi) or tuple(sorted({lo, hi}))
    name = precision.precision if precision is not None else "fp32"
    tolerance = engine_tolerance if engine_tolerance is not None else ENGINE_TOLERANCE[name]
    external = needs_external_data(plan.onnx) if external_data is None else external_data
    data = external_data_path(onnx_path)
    with atomic_files(onnx_path, data) as (tmp_onnx, _), atomic_path(out) as tmp_engine:
        write_onnx(plan.onnx, tmp_onnx, external=external)
        graph_sha256 = onnx_graph_sha256(tmp_onnx)  # the engine's name: it says which graph it was built from
        build_engine(tmp_onnx, tmp_engine, input_size=plan.input_size, batch_range=batch_range,
                     strongly_typed=precision is not None, network_name=graph_sha256)
        checks = compare_engine(tmp_engine, tmp_onnx, plan.output_names, input_size=plan.input_size,
                                batches=compare_at, tolerance=tolerance)
        record = record_engine(tmp_onnx, tmp_engine, batch_range=batch_range, graph_sha256=graph_sha256)
    if not external and data.is_file():
        data.unlink()  # a stale weights file of an earlier compile
    files = [out, onnx_path] + ([data] if external else [])
    return files, {"runtime": "TensorRT", "onnx": str(onnx_path), "batch_range": list(batch_range),
                   "sha256": record["sha256"], "graph_sha256": graph_sha256,
                   "strongly_typed": precision is not None,
                   "comparison": {"against": "the verified ONNX graph in ONNX Runtime CPU", "tolerance": tolerance,
                                  "checks": checks}}


def _describe(plan, base, tasks) -> dict[str, Any]:
    return {"base": _where(base), "tasks": [_where(t) for t in tasks], "outputs": plan.output_names,
            "input_size": list(plan.input_size) if plan.input_size else None}


def _prune_options(prune):
    if prune is None:
        return None
    from subtune.pruning.plan import PruneOptions

    if isinstance(prune, (int, float)) and not isinstance(prune, bool):
        prune = PruneOptions(float(prune))
    if not isinstance(prune, PruneOptions):
        raise SubtuneError(f"prune: expected a fraction or PruneOptions, found {type(prune).__name__}")
    return prune.check()
