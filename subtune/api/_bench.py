"""`subtune.benchmark`, `benchmark_compare`, `benchmark_profile`: what `subtune-bench` does in its
three modes. The latency of a model file; the four deployments of a base and its tasks side by
side ((a) base alone, (b) naive, (c) split sessions, (d) the compiled graph); and the added
latency of each window of a finetuning profile against its accuracy.

(`benchmark`, not `bench`: `subtune.benchmarking` is the benchmarking package these are built on.)"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from subtune.api._common import _batches, _image_size, _load_base, _load_task
from subtune.errors import SubtuneError

if TYPE_CHECKING:
    from subtune.benchmarking.harness import Protocol
    from subtune.delta import TaskDelta
    from subtune.models import BaseModel

log = logging.getLogger("subtune")

RUNTIMES = ("onnxruntime", "torch", "tensorrt")


@dataclass
class BenchResult:
    """The measurement (bench.latency.ModelLatency, bench.compare.CompareResult or
    bench.tradeoff.TradeoffResult) and the files written: the JSON, the plot."""

    result: Any = field(repr=False)
    kind: str  # "model" | "compare" | "profile"
    json_path: Path | None = None
    plot_path: Path | None = None

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.json_path, self.plot_path) if p is not None]

    @property
    def report(self) -> dict[str, Any]:
        """What the JSON holds."""
        from subtune.benchmarking.report import to_jsonable

        return to_jsonable(self.result)

    def table(self) -> str:
        """The human-readable table `subtune-bench` prints."""
        from subtune.benchmarking import report

        render = {"model": report.model_table, "compare": report.compare_table, "profile": report.tradeoff_table}
        return render[self.kind](self.result)


def benchmark(model: str | os.PathLike, *, batches: Sequence[int] = (1,), protocol: "Protocol | None" = None,
              warmup: int | None = None, iters: int | None = None, repeats: int | None = None,
              paper_protocol: bool = False, threads: int | None = None, provider: str | None = None,
              cuda_graph: bool = False, keep_samples: bool = False, json: str | os.PathLike | None = None,
              progress: bool = True) -> BenchResult:
    """Time one model file: a .onnx in ONNX Runtime, or a .plan/.engine in TensorRT, on random
    inputs at each batch size. protocol (or warmup/iters/repeats/paper_protocol): the timing
    protocol (default 10 warm-up runs, 5 repeats of 30). json: write the result there."""
    from subtune.benchmarking.latency import bench_runner
    from subtune.machine import usable_cores
    from subtune.runtimes import ENGINE_SUFFIXES, runner_for_file

    batches = list(_batches(batches, "`batches`"))
    protocol = _protocol(protocol, warmup, iters, repeats, paper_protocol)
    _threads(threads)
    json_path = _writable(json)
    path = str(model)
    if path.endswith((".pt", ".pth")):
        raise SubtuneError(f"{path} is a subtune base/task file: time a compiled .onnx model, or compare a base and its "
                           "tasks (benchmark_compare, `compare`)")
    threads = threads or usable_cores()
    engine = path.endswith(ENGINE_SUFFIXES)
    runner = runner_for_file(path, provider=provider, threads=None if engine else threads, cuda_graph=cuda_graph)
    result = bench_runner(runner, model=path, batches=batches, protocol=protocol, threads=threads,
                          show_progress=progress, keep_samples=keep_samples)
    return _finish(BenchResult(result, "model", json_path), None)


def benchmark_compare(base: "str | os.PathLike | BaseModel", tasks: "Sequence[str | os.PathLike | TaskDelta]", *,
                      batches: Sequence[int] = (1,), protocol: "Protocol | None" = None, warmup: int | None = None,
                      iters: int | None = None, repeats: int | None = None, paper_protocol: bool = False,
                      runtime: str = "onnxruntime", provider: str | None = None, device: str | None = None,
                      cuda_graph: bool = False, task_counts: Sequence[int] | None = None,
                      image_size: int | tuple[int, int] | None = None, threads: int | None = None,
                      keep_samples: bool = False, json: str | os.PathLike | None = None,
                      plot: str | os.PathLike | None = None, progress: bool = True) -> BenchResult:
    """Time the deployments of `base` and `tasks` (paths or loaded objects): (a) the base alone,
    (b) naive (a full model per task), (c) split sessions, (d) the compiled multi-task graph,
    for the first k tasks for each k in task_counts (default: all). runtime: onnxruntime
    (provider cpu|cuda|tensorrt), torch (device cpu|cuda) or tensorrt (cuda_graph).
    For ONNX Runtime this must run before any other ONNX Runtime session in this process
    (it sizes the process-wide thread pool). json, plot: write the result / a figure there."""
    from subtune.benchmarking.compare import run_compare

    batches = list(_batches(batches, "`batches`"))
    protocol = _protocol(protocol, warmup, iters, repeats, paper_protocol)
    _threads(threads)
    json_path, plot_path = _outputs(json, plot)
    tasks = [tasks] if isinstance(tasks, (str, os.PathLike)) else list(tasks)
    if not tasks:
        raise SubtuneError("`compare` needs a base file and at least one task file")
    spec = _runtime_spec(runtime, provider, device, cuda_graph, batches)
    counts = list(_batches(task_counts, "`task_counts`")) if task_counts else None
    base_model = _load_base(base)
    task_models = [_load_task(t) for t in tasks]
    result = run_compare(base_model, task_models, batches=batches, protocol=protocol, runtime=spec, task_counts=counts,
                         input_size=_image_size(image_size), threads=threads, show_progress=progress,
                         keep_samples=keep_samples)
    return _finish(BenchResult(result, "compare", json_path, plot_path), "plot_compare")


def benchmark_profile(base: "str | os.PathLike | BaseModel", profile: str | os.PathLike, *, batch: int = 1,
                      protocol: "Protocol | None" = None, warmup: int | None = None, iters: int | None = None,
                      repeats: int | None = None, paper_protocol: bool = False, runtime: str = "onnxruntime",
                      provider: str | None = None, device: str | None = None, cuda_graph: bool = False,
                      image_size: int | tuple[int, int] | None = None, threads: int | None = None,
                      budget_ms: float | None = None, json: str | os.PathLike | None = None,
                      plot: str | os.PathLike | None = None, progress: bool = True) -> BenchResult:
    """Each window of a finetuning profile (the JSON of `subtune profile`): its accuracy against
    the latency it adds to the base at `batch`. budget_ms: result.result.chosen is the most
    accurate window adding at most this (None when none does)."""
    from subtune.benchmarking.tradeoff import load_profile, measure_tradeoff

    (batch,) = _batches((batch,), "`batch`")
    protocol = _protocol(protocol, warmup, iters, repeats, paper_protocol)
    _threads(threads)
    json_path, plot_path = _outputs(json, plot)
    spec = _runtime_spec(runtime, provider, device, cuda_graph, [batch])
    base_model = _load_base(base)
    entries = load_profile(profile, arch=base_model.arch)
    result = measure_tradeoff(base_model, entries, batch=batch, protocol=protocol, runtime=spec,
                              input_size=_image_size(image_size), threads=threads, budget_ms=budget_ms,
                              show_progress=progress)
    return _finish(BenchResult(result, "profile", json_path, plot_path), "plot_tradeoff")


# --------------------------------------------------------------------------- helpers


def _finish(result: BenchResult, plot_name: str | None) -> BenchResult:
    from subtune.benchmarking.report import write_json

    if result.json_path is not None:
        write_json(result.json_path, result.result)
        log.info("wrote %s", result.json_path)
    if result.plot_path is not None and plot_name:
        from subtune.benchmarking import plots

        getattr(plots, plot_name)(result.result, result.plot_path)
        log.info("wrote %s", result.plot_path)
    return result


def _protocol(protocol, warmup, iters, repeats, paper_protocol):
    from types import SimpleNamespace

    from subtune.benchmarking.harness import Protocol, protocol_from_flags

    if protocol is not None:
        if not isinstance(protocol, Protocol):
            raise SubtuneError(f"`protocol`: expected a subtune.benchmarking.harness.Protocol, found {type(protocol).__name__}")
        return protocol
    return protocol_from_flags(SimpleNamespace(paper_protocol=paper_protocol, warmup=warmup, iters=iters,
                                               repeats=repeats))


def _threads(threads) -> None:
    if threads is not None and threads < 1:
        raise SubtuneError(f"`threads` must be at least 1, found {threads}")


def _writable(path) -> Path | None:
    from subtune.atomic import check_writable

    return Path(check_writable(path)) if path else None


def _outputs(json_path, plot_path) -> tuple[Path | None, Path | None]:
    json_path, plot_path = _writable(json_path), _writable(plot_path)
    if json_path and plot_path and json_path.resolve() == plot_path.resolve():
        raise SubtuneError(f"`json` and `plot` both name {json_path}; choose two files")
    return json_path, plot_path


def _runtime_spec(runtime: str, provider, device, cuda_graph: bool, batches: list[int]):
    from subtune.benchmarking.variants import RuntimeSpec

    runtime = runtime or "onnxruntime"
    if runtime not in RUNTIMES:
        raise SubtuneError(f"`runtime` {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if provider and runtime != "onnxruntime":
        raise SubtuneError(f"`provider` applies to `runtime` onnxruntime, not {runtime}")
    if device and runtime != "torch":
        raise SubtuneError(f"`device` applies to `runtime` torch, not {runtime} (ONNX Runtime takes `provider`)")
    if cuda_graph and runtime != "tensorrt":
        raise SubtuneError("`cuda_graph` applies to `runtime` tensorrt")
    if runtime == "tensorrt":
        from subtune.runtimes.tensorrt import tensorrt_unavailable_reason

        reason = tensorrt_unavailable_reason()
        if reason:
            raise SubtuneError(f"`runtime` tensorrt: {reason}")
    # TensorRT engines get one profile spanning the timed batch sizes, tuned for the largest
    return RuntimeSpec(runtime, provider=provider or "cpu", device=device or "cpu",
                       cuda_graph=cuda_graph, batch_range=(min(batches), max(batches), max(batches)))
