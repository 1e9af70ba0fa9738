"""`subtune.prune` and `subtune.prune_sweep`: what `subtune prune` and `subtune prune-sweep` do.
Structured pruning of the channels inside a task's tuned blocks (Torch-Pruning), with optional
recovery training; and the sweep of accuracy against parameters kept over ratios, scopes and
norms. Files are written atomically; the results carry their reports."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from subtune.api._common import _load_base, _load_task, _where, report_path
from subtune.errors import SubtuneError

if TYPE_CHECKING:
    from subtune.delta import TaskDelta
    from subtune.models import BaseModel
    from subtune.pruning.plan import PruneOptions
    from subtune.pruning.sweep import Sweep
    from subtune.training.options import RayOptions

log = logging.getLogger("subtune")

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class PruneResult:
    """The pruned task (in memory, and at `output` when one was given) and the report."""

    task: "TaskDelta"
    report: dict[str, Any]
    output: Path | None
    report_path: Path | None

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.output, self.report_path) if p is not None]

    @property
    def params_kept(self) -> float:
        return float(self.report["params_kept"])


@dataclass
class SweepResult:
    """The sweep's points (pruning.sweep.Sweep), the JSON it wrote, and the plot."""

    sweep: "Sweep" = field(repr=False)
    report: dict[str, Any]
    output: Path | None
    plot_path: Path | None

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.output, self.plot_path) if p is not None]


def prune(base: "str | os.PathLike | BaseModel", task: "str | os.PathLike | TaskDelta",
          output: str | os.PathLike | None = None, *, ratio: "float | PruneOptions", norm: str = "l2",
          scope: str = "local", round_to: int | None = None, heads: bool = True, data: str | None = None,
          label_map: str | dict | None = None, limit: int | None = None, test_limit: int = 2000,
          epochs: int | None = None, lr: float = 1e-3, batch_size: int = 256, seed: int = 0,
          report: bool | str | os.PathLike = True) -> PruneResult:
    """Prune `ratio` of the channels inside the task's tuned blocks.

    base, task: paths or loaded objects (the base the task was trained from; a task not yet pruned).
    ratio: the fraction to remove, in (0, 1), or a PruneOptions (then norm/scope/round_to/heads
        are its own). norm l1|l2 ranks channels; scope local (the same fraction per layer) or
        global (ranked across the task's blocks); heads=False keeps every ViT attention head.
    data: a dataset spec (fashion-mnist, imagefolder:DIR, ...): report accuracy before and after,
        and (unless epochs=0) recover by training the pruned blocks and head.
    output: the pruned task file; None keeps it in memory. report: True writes
        `<output stem>.report.json` beside it, a path writes it there.
    """
    from subtune.atomic import check_writable, write_text
    from subtune.delta import validate_task
    from subtune.formats import save_task
    from subtune.pruning.plan import PruneOptions
    from subtune.pruning.prune import prune_task

    options = ratio if isinstance(ratio, PruneOptions) else PruneOptions(ratio, norm, scope, round_to, heads=heads)
    options = options.check()
    out = check_writable(Path(output)) if output is not None else None
    rpath = report_path(report, out, ".report.json")
    base_model, task_model = _load_base(base), _load_task(task)
    if task_model.taps is not None:
        raise SubtuneError(f"{_where(task)} is a tap task (Head2Toe or linear probe): it tunes no blocks, so there "
                           "are no channels to prune; prune a SubTuning or LoRA task")
    backbone = frozen_backbone(base_model)
    validate_task(task_model, base_model, backbone)
    task_data = TaskData(data, task_model, base_model, backbone, label_map=label_map, limit=limit,
                         test_limit=test_limit, epochs=epochs, lr=lr, batch_size=batch_size,
                         seed=seed) if data else None
    result = prune_task(task_model, base_model, options, backbone=backbone)
    pruned, result_report = result.task, dict(result.report)
    if task_data:
        result_report["accuracy"] = {"unpruned": task_data.accuracy(task_model), "pruned": task_data.accuracy(pruned)}
        if task_data.config:
            pruned = task_data.recover(pruned)
            result_report["accuracy"]["recovered"] = task_data.accuracy(pruned)
            result_report["recovery"] = task_data.config.to_meta()
        result_report["data"] = task_data.describe()
    if out is not None:
        save_task(out, pruned)
    result_report = {"task": _where(task), "output": str(out) if out is not None else None, **result_report}
    if rpath is not None:
        write_text(rpath, json.dumps(result_report, indent=2))
    log.info("pruned %s: %.1f%% of the parameters kept", _where(task), 100 * result_report["params_kept"])
    return PruneResult(pruned, result_report, out, rpath)


def prune_sweep(base: "str | os.PathLike | BaseModel", task: "str | os.PathLike | TaskDelta", data: str,
                output: str | os.PathLike | None = None, *, ratios: Sequence[float] = RATIOS,
                scopes: Sequence[str] = ("local", "global"), norms: Sequence[str] = ("l1", "l2"),
                round_to: int | None = None, plot: bool | str | os.PathLike = True,
                label_map: str | dict | None = None, limit: int | None = None, test_limit: int = 2000,
                epochs: int | None = None, lr: float = 1e-3, batch_size: int = 256, seed: int = 0,
                ray: "RayOptions | str | None" = None, progress: bool = False) -> SweepResult:
    """Accuracy against parameters kept for each ratio x scope x norm, each point pruned from the
    task and (unless epochs=0) recovered on `data`.

    output: the sweep JSON; plot: True writes `<output stem>.png` beside it, a path writes it
        there, False none. ray: the points as Ray tasks: an address ("local", "auto", HOST:PORT)
        or RayOptions (cpus_per_run, gpus_per_run).
    progress: a progress bar on stderr (tqdm)."""
    from subtune.atomic import check_writable, write_text
    from subtune.delta import validate_task
    from subtune.pruning.plan import PruneOptions
    from subtune.pruning.sweep import plot_sweep, run_sweep

    from subtune.training.options import ray_options

    ray = ray_options(ray)
    ratios = [float(r) for r in ratios]
    scopes, norms = list(scopes), list(norms)
    for values, allowed, parameter in ((scopes, ("local", "global"), "scopes"), (norms, ("l1", "l2"), "norms")):
        if not values or any(v not in allowed for v in values):
            raise SubtuneError(f"`{parameter}` expects {' and/or '.join(allowed)}; found {values!r}")
    if not ratios:
        raise SubtuneError("`ratios` expects fractions such as 0.1, 0.5; found none")
    for r in ratios:
        PruneOptions(r, norms[0], scopes[0], round_to).check()
    out = check_writable(Path(output)) if output is not None else None
    if plot is True:
        plot = out.with_suffix(".png") if out is not None else False
    plot_path = check_writable(Path(plot)) if plot else None
    base_model, task_model = _load_base(base), _load_task(task)
    backbone = frozen_backbone(base_model)
    validate_task(task_model, base_model, backbone)
    task_data = TaskData(data, task_model, base_model, backbone, label_map=label_map, limit=limit,
                         test_limit=test_limit, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    total = len(ratios) * len(scopes) * len(norms)
    with contextlib.ExitStack() as stack:
        from tqdm import tqdm

        bar = stack.enter_context(tqdm(total=total, desc="pruning sweep [serial]", unit="point",
                                       disable=None if progress else True))

        def on_ray(work):
            from subtune.sweeps import RayMap

            pool = stack.enter_context(RayMap(work, address=ray.cluster, cpus_per_run=ray.cpus_per_run,
                                              gpus_per_run=ray.gpus_per_run))
            bar.set_description(f"pruning sweep [{pool.describe()}]")
            return pool

        sweep = run_sweep(task_model, base_model, backbone, task_data.test, train=task_data.train,
                          config=task_data.config, ratios=ratios, scopes=scopes, norms=norms, round_to=round_to,
                          on_point=lambda _: bar.update(1), executor=on_ray if ray else None)
    result_report = {"task": _where(task), "data": task_data.describe(), **sweep.to_json()}
    if out is not None:
        write_text(out, json.dumps(result_report, indent=2))
    if plot_path is not None:
        plot_sweep(sweep, plot_path)
    log.info("pruning sweep of %s: %d points", _where(task), total)
    return SweepResult(sweep, result_report, out, plot_path)


# --------------------------------------------------------------------------- shared pieces


def frozen_backbone(base):
    from subtune.training.network import freeze

    _, backbone = base.build()
    return freeze(backbone)


class TaskData:
    """Train and test data for one task, cached before its first tuned block (loaded once)."""

    def __init__(self, spec: str, task, base, backbone, *, label_map=None, limit: int | None = None,
                 test_limit: int | None = 2000, epochs: int | None = None, lr: float = 1e-3, batch_size: int = 256,
                 seed: int = 0):
        from subtune.training.trainer import TrainConfig, default_epochs

        self.backbone, self.base, self.spec = backbone, base, spec
        self._label_map, self._seed = label_map, seed
        self.test = self._cached(task, "test", test_limit)
        self.config, self.train = None, None
        if epochs != 0:
            self.train = self._cached(task, "train", limit)
            epochs = epochs if epochs is not None else default_epochs(len(self.train))
            self.config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)

    def _cached(self, task, split: str, limit: int | None):
        from subtune.pruning.recover import CachedData, load_task_data

        images, labels = load_task_data(task, self.base, self.spec, split, limit=limit, seed=self._seed,
                                        label_map=self._label_map)
        return CachedData(self.backbone, task.first, images, labels, siamese=task.siamese)

    def accuracy(self, task) -> float:
        from subtune.pruning.recover import accuracy

        return accuracy(task, self.backbone, self.test)

    def recover(self, task):
        from subtune.pruning.recover import recover

        return recover(task, self.base, self.backbone, self.train, self.config)

    def describe(self) -> dict:
        return {"spec": self.spec, "train_images": len(self.train) if self.train else 0, "test_images": len(self.test)}
