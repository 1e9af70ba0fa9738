"""The four ways to deploy a base model and k SubTuned tasks, built as runnable variants:

    (a) base      the base model alone: the floor every other variant is measured against
    (b) naive     the base plus one full model per task, each with its own copy of every
                  weight: what full finetuning deploys
    (c) split     one session for the shared prefix (stem and the blocks before the earliest
                  tuned block), then each remainder (the base's, and each task's with its
                  blocks swapped in) as its own session fed the prefix's output, with no batch
                  concatenation: how a Triton ensemble would split it
    (d) compiled  the compiler's single multi-task graph (fork, merge by batch concatenation)
    (e) selected  the same graph compiled with --task-select, each image computing the base and
                  only the tasks it asks for, under a request mix (MIXES: every task, one random
                  task per image, one fixed task, none); ONNX Runtime only

Sub-models are torch modules cut from the Backbone and the TaskDeltas; a RuntimeSpec turns
each into a runner (exported with export_onnx for ONNX Runtime and TensorRT, or run eagerly).
Runners are cached and shared, so the k = 1, 2, 4, 8 variants of one set of tasks reuse the
same sessions, and (a) is the same session as (b)'s base.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import nn

from subtune.delta.standalone import TaskNet, task_net
from subtune.errors import SubtuneError
from subtune.delta import TaskDelta, validate_task
from subtune.models import BaseModel
from subtune.runtimes.base import BaseRunner, TensorSpec

if TYPE_CHECKING:
    import numpy as np

    from subtune.models import Backbone

RUNTIMES = ("onnxruntime", "tensorrt", "torch")
VARIANT_LABELS = {
    "base": "(a) base alone",
    "naive": "(b) naive: base + a full model per task",
    "split": "(c) split: shared prefix + a session per remainder",
    "compiled": "(d) compiled multi-task graph",
    "selected": "(e) task-select graph",
}
# (e)'s request mixes: which tasks each image of a timed batch asks for (mix_mask)
MIXES = {
    "all": "every task on every image",
    "one-random": "one random task per image",
    "one-fixed": "one fixed task (the first) on every image",
    "none": "no task asked",
}
EXPORT_BATCH = 2  # torch.export specialises batch sizes 0 and 1


# --------------------------------------------------------------------------- sub-models
# Each takes one input named `images` (export_onnx's input name), even when it carries features.


class WholeModel(nn.Module):
    """The base model with export_onnx's input name."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


class PrefixModel(nn.Module):
    """The stem and blocks 1..before-1: the part every task shares."""

    def __init__(self, backbone: "Backbone", before: int):
        super().__init__()
        self.stem, self.blocks = backbone.stem, nn.ModuleList(backbone.blocks[: before - 1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.stem(images)
        for block in self.blocks:
            h = block(h)
        return h


def remainder_model(backbone: "Backbone", start: int, task: TaskDelta | None = None) -> TaskNet:
    """Blocks start..N (a task's own blocks in its window), the neck and a head (the base's
    classifier without a task), fed the prefix's output at point `start`."""
    if task is None:
        return TaskNet(backbone, None, nn.ModuleList(), backbone.classifier, entry=start, hold_base=True)
    return TaskNet.from_task(backbone, task, entry=start, hold_base=True)




# --------------------------------------------------------------------------- runtimes


@dataclass(frozen=True)
class RuntimeSpec:
    """Where the variants run. ONNX Runtime sessions share one process-wide thread pool
    (use_shared_thread_pool), so sessions timed back to back do not fight over cores."""

    name: str = "onnxruntime"
    provider: str = "cpu"  # ONNX Runtime only
    device: str = "cpu"  # PyTorch only: "cpu" or "cuda" (inputs copied over and outputs back, as for ORT's CUDA provider)
    threads: int | None = None  # intra-op threads; for ONNX Runtime, the shared pool's size (prepare_runtime)
    cuda_graph: bool = False  # TensorRT only
    batch_range: tuple[int, int, int] = (1, 8, 32)  # TensorRT only

    def __post_init__(self):
        if self.name not in RUNTIMES:
            raise SubtuneError(f"unknown runtime {self.name!r}: expected one of {', '.join(RUNTIMES)}")
        if self.device != "cpu" and self.name != "torch":
            raise SubtuneError(f"a device applies to the torch runtime, not {self.name} (ONNX Runtime takes a provider)")


def prepare_runtime(runtime: RuntimeSpec, threads: int | None) -> RuntimeSpec:
    """Fix the intra-op thread count (default: the usable cores). For ONNX Runtime this sizes the
    process-wide shared pool, so it must come before any session is created."""
    from subtune.machine import usable_cores

    threads = threads or usable_cores()
    if runtime.name == "onnxruntime":
        from subtune.runtimes.onnxruntime import use_shared_thread_pool

        use_shared_thread_pool(threads)
    return replace(runtime, threads=threads)


@dataclass
class Built:
    runner: BaseRunner
    weight_bytes: int


def make_runner(spec: RuntimeSpec, module: nn.Module, example: torch.Tensor, output_names: list[str], *,
                name: str, workdir: Path | None = None) -> Built:
    """An active runner for `module` on `spec`'s runtime, and the bytes of weights it holds."""
    module = module.eval()
    if spec.name == "torch":
        from subtune.benchmarking.costmodel import weight_bytes
        from subtune.runtimes.pytorch import TorchRunner

        inputs = {"images": TensorSpec((None, *example.shape[1:]), "float32")}
        runner = TorchRunner(module, inputs=inputs, output_names=output_names, device=spec.device,
                             threads=spec.threads, name=name)
        runner.activate()
        return Built(runner, weight_bytes(module))
    from subtune.compiler.export import export_onnx

    return runner_from_onnx(spec, export_onnx(module, example, output_names), sample_shape=tuple(example.shape[1:]),
                            name=name, workdir=workdir)


def runner_from_onnx(spec: RuntimeSpec, model, *, sample_shape: tuple[int, ...], name: str,
                     workdir: Path | None) -> Built:
    """An active runner for an onnx_ir model on ONNX Runtime or (through an engine) TensorRT."""
    import onnx_ir as ir

    nbytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    data = ir.to_proto(model).SerializeToString()
    if spec.name == "tensorrt":
        from subtune.runtimes.tensorrt import EngineFromPath, TrtRunner, build_engine

        onnx_path, engine_path = workdir / f"{name}.onnx", workdir / f"{name}.plan"
        onnx_path.write_bytes(data)
        build_engine(onnx_path, engine_path, input_size=(1, 1), batch_range=spec.batch_range,
                     sample_shape=sample_shape)  # sample_shape sets the profile; input_size is not used
        runner = TrtRunner(EngineFromPath(engine_path), cuda_graph=spec.cuda_graph, name=name)
    else:
        from subtune.runtimes.onnxruntime import OnnxrtRunner, SessionFromOnnx

        runner = OnnxrtRunner(SessionFromOnnx(data, provider=spec.provider, shared_pool=True), name=name)
    runner.activate()
    return Built(runner, nbytes)


# --------------------------------------------------------------------------- variants


def random_images(batch: int, input_size: tuple[int, int]) -> "np.ndarray":
    """The batch every variant is timed on (seeded by the batch size: the same in every run)."""
    import numpy as np

    return np.random.default_rng(batch).standard_normal((batch, 3, *input_size), dtype=np.float32)


def mix_mask(mix: str, batch: int, k: int) -> "np.ndarray":
    """The `tasks` input of a --task-select graph for request mix `mix` (MIXES): bool [batch, k],
    the same in every run (random choices seeded by the batch size)."""
    import numpy as np

    if mix not in MIXES:
        raise SubtuneError(f"unknown request mix {mix!r}: expected one of {', '.join(MIXES)}")
    if mix == "all":
        return np.ones((batch, k), dtype=bool)
    if mix == "none":
        return np.zeros((batch, k), dtype=bool)
    columns = np.random.default_rng(batch).integers(0, k, batch) if mix == "one-random" else np.zeros(batch, int)
    return np.eye(k, dtype=bool)[columns]


@dataclass
class Step:
    runner: BaseRunner
    weight_bytes: int
    source: str = "images"  # what feeds this step: the images, or an earlier step's output
    mask_input: str | None = None  # a --task-select graph's input that says which tasks each image asks for

    @classmethod
    def of(cls, built: Built, source: str = "images", mask_input: str | None = None) -> "Step":
        return cls(built.runner, built.weight_bytes, source, mask_input)


@dataclass
class Variant:
    kind: str  # base | naive | split | compiled | selected
    tasks: int  # k
    steps: list[Step]
    weight_bytes: int
    mix: str | None = None  # selected only: the request mix (MIXES)
    label: str = field(init=False)

    def __post_init__(self):
        self.label = VARIANT_LABELS[self.kind] + (f", {MIXES[self.mix]}" if self.mix else "")
        self._masks: dict[int, "np.ndarray"] = {}

    @property
    def key(self) -> str:
        if self.kind == "base":
            return self.kind
        return f"{self.kind}/k={self.tasks}" + (f"/{self.mix}" if self.mix else "")

    @property
    def sessions(self) -> int:
        return len(self.steps)

    def mask(self, batch: int) -> "np.ndarray":
        """selected only: what each of `batch` images asks for (made once per batch size, outside any timing)."""
        if batch not in self._masks:
            self._masks[batch] = mix_mask(self.mix, batch, self.tasks)
        return self._masks[batch]

    def run(self, images: "np.ndarray") -> dict[str, "np.ndarray"]:
        values = {"images": images}
        for step in self.steps:
            feeds = {"images": values[step.source]}
            if step.mask_input is not None:
                feeds[step.mask_input] = self.mask(len(images))
            values.update(step.runner.infer(feeds))
        return values

    def describe(self) -> dict:
        return self.steps[0].runner.describe()


class VariantBuilder:
    """Builds variants for a base and its tasks on one runtime; `with VariantBuilder(...) as b:`
    releases every session at the end."""

    def __init__(self, base: BaseModel, tasks: list[TaskDelta], *, input_size: tuple[int, int],
                 runtime: RuntimeSpec = RuntimeSpec(), on_build: Callable[[str], None] | None = None):
        _, self.backbone = base.build()
        names = set()
        for t in tasks:
            validate_task(t, base, self.backbone)
            if t.siamese:
                raise SubtuneError(f"task {t.name!r} has a siamese head: the variants time plain task heads only; "
                                   "compare it with a plain-head task on the same blocks")
            if t.name in names:
                raise SubtuneError(f"two tasks are named {t.name!r}: output names must be unique; rename one")
            names.add(t.name)
        self.base_model, self.tasks, self.input_size, self.runtime = base, list(tasks), tuple(input_size), runtime
        self.on_build = on_build or (lambda what: None)
        self._built: dict[str, Built] = {}
        self._workdir = tempfile.TemporaryDirectory(prefix="subtune-bench-") if runtime.name == "tensorrt" else None
        self._images = torch.randn(EXPORT_BATCH, 3, *self.input_size, generator=torch.Generator().manual_seed(0))

    def __enter__(self) -> "VariantBuilder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for built in reversed(self._built.values()):  # last in, first out: runners restore what they changed
            built.runner.deactivate()
        self._built.clear()
        if self._workdir is not None:
            with contextlib.suppress(OSError):
                self._workdir.cleanup()

    def variant(self, kind: str, tasks: Sequence[TaskDelta] = (), mix: str | None = None) -> Variant:
        """`tasks`: some of the builder's tasks (ignored for the base); `mix`: the request mix of
        a selected variant (MIXES)."""
        if kind not in VARIANT_LABELS:
            raise SubtuneError(f"unknown variant {kind!r}: expected one of {', '.join(VARIANT_LABELS)}")
        if (kind == "selected") != (mix is not None):
            raise SubtuneError("a request mix goes with the selected variant (e), and only with it")
        if kind == "selected" and self.runtime.name != "onnxruntime":
            raise SubtuneError(f"the task-select graph (e) runs on ONNX Runtime, not {self.runtime.name}")
        if mix is not None and mix not in MIXES:
            raise SubtuneError(f"unknown request mix {mix!r}: expected one of {', '.join(MIXES)}")
        tasks = [] if kind == "base" else list(tasks)
        known = {id(t) for t in self.tasks}  # identity: TaskDelta equality would compare tensors
        if kind != "base" and (not tasks or any(id(t) not in known for t in tasks)):
            raise SubtuneError(f"variant {kind} needs one or more of the builder's tasks")
        taps = [t.name for t in tasks if t.taps is not None]
        if taps and kind in ("naive", "split"):
            raise SubtuneError(f"task {taps[0]!r} is a tap task (Head2Toe or linear probe): it forks no blocks, so the "
                               f"{kind} deployment does not apply; compare it in the compiled graph")
        steps = getattr(self, f"_{kind}_steps")(tasks)
        return Variant(kind, len(tasks), steps, sum(s.weight_bytes for s in steps), mix)

    def release(self, variant: Variant) -> None:
        """Free the sessions only `variant` uses (never the base's), to bound memory."""
        for key, built in list(self._built.items()):
            if key != "base" and any(built.runner is s.runner for s in variant.steps):
                built.runner.deactivate()
                del self._built[key]

    # -- the four deployments -------------------------------------------------------------
    def _base_steps(self, tasks) -> list[Step]:
        return [Step.of(self._get("base", lambda: WholeModel(self.base_model.build()[0]), ["base"]))]

    def _naive_steps(self, tasks) -> list[Step]:
        steps = self._base_steps(tasks)
        for t in tasks:
            # a task as its own full model, on a private copy of the base: shares no tensor with any other variant
            make = lambda t=t: task_net(self.base_model.build()[1], t, hold_base=True)  # noqa: E731
            steps.append(Step.of(self._get(f"naive_{t.name}", make, [t.name])))
        return steps

    def _split_steps(self, tasks) -> list[Step]:
        start = min(t.first for t in tasks)  # one prefix, up to the earliest tuned block
        prefix = self._get(f"prefix_to{start}", lambda: PrefixModel(self.backbone, start), ["shared"])
        features = self._prefix_output(start)
        steps = [Step.of(prefix),
                 Step.of(self._get(f"rest{start}_base", lambda: remainder_model(self.backbone, start), ["base"], features),
                         source="shared")]
        for t in tasks:
            make = lambda t=t: remainder_model(self.backbone, start, t)  # noqa: E731
            steps.append(Step.of(self._get(f"rest{start}_{t.name}", make, [t.name], features), source="shared"))
        return steps

    def _compiled_steps(self, tasks) -> list[Step]:
        key = "compiled_" + "_".join(t.name for t in tasks)
        if key not in self._built:
            self.on_build(key)
            self._built[key] = self._compile(tasks, key)
        return [Step.of(self._built[key])]

    def _selected_steps(self, tasks) -> list[Step]:
        from subtune.passes.task_rows_from_mask import MASK_INPUT

        key = "selected_" + "_".join(t.name for t in tasks)  # one graph for every mix
        if key not in self._built:
            self.on_build(key)
            self._built[key] = self._compile(tasks, key, task_select=True)
        return [Step.of(self._built[key], mask_input=MASK_INPUT)]

    def _compile(self, tasks, key: str, task_select: bool = False) -> Built:
        from subtune.compiler.pipeline import CompileOptions, compile_plan
        from subtune.compiler.plan import Plan

        plan = Plan(self.base_model, list(tasks), input_size=self.input_size)
        if self.runtime.name == "torch":
            # the tasks' blocks as they are, like the naive and split deployments' (no BatchNorm folded)
            compile_plan(plan, CompileOptions(verify=False, fold_batch_norm=False), until="lower")
            return make_runner(self.runtime, plan.module, self._images, plan.output_names, name=key)
        compile_plan(plan, CompileOptions(verify=False, task_select=task_select))
        return runner_from_onnx(self.runtime, plan.onnx, sample_shape=(3, *self.input_size), name=key,
                                workdir=self._workdir_path)

    # -- caching --------------------------------------------------------------------------
    @property
    def _workdir_path(self) -> Path | None:
        return Path(self._workdir.name) if self._workdir is not None else None

    def _get(self, key: str, make: Callable[[], nn.Module], outputs: list[str],
             example: torch.Tensor | None = None) -> Built:
        if key not in self._built:
            self.on_build(key)
            self._built[key] = make_runner(self.runtime, make(), self._images if example is None else example,
                                           outputs, name=key, workdir=self._workdir_path)
        return self._built[key]

    def _prefix_output(self, start: int) -> torch.Tensor:
        """An example of what the prefix hands the remainders, for exporting them."""
        with torch.inference_mode():
            return PrefixModel(self.backbone, start).eval()(self._images).clone()
