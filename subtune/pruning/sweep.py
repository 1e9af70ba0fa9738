"""The paper's Figure 7 / 16 experiment: prune at ratios 0.1..0.9, local/global x L1/L2, recover,
and plot accuracy against the fraction of SubTuning parameters kept.

`run_sweep` returns data; `plot_sweep` and `sweep_table` format it. Every point is independent:
`SweepWork(...)(point)` prunes (and recovers) one, and `run_sweep(executor=...)` hands the points
to an executor (`run(items, on_done)`; default: one after another here; `subtune.sweeps.RayMap`
runs them as Ray tasks). Points come back in any order and are stored in sweep order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from subtune.errors import SubtuneError
from subtune.delta import TaskDelta
from subtune.models import Backbone, BaseModel
from subtune.pruning.plan import NORMS, SCOPES, PruneOptions
from subtune.pruning.prune import prune_task
from subtune.pruning.recover import CachedData, accuracy, recover

RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))


@dataclass
class SweepPoint:
    ratio: float
    scope: str
    norm: str
    params_kept: float | None = None  # fraction of the tuned blocks' parameters
    flops_kept: float | None = None
    accuracy_pruned: float | None = None  # right after pruning
    accuracy: float | None = None  # after recovery training (equal to accuracy_pruned without it)
    error: str | None = None  # why this point could not be pruned (e.g. a layer would be emptied)


@dataclass
class Sweep:
    task: str
    blocks: list[int]
    accuracy_unpruned: float
    recovery: dict | None  # the trainer's settings (TrainConfig.to_meta()), None without recovery training
    round_to: int | None
    points: list[SweepPoint] = field(default_factory=list)

    def to_json(self) -> dict:
        return {**asdict(self), "best_per_5pct": [asdict(p) for p in best_per_bin(self.points)]}


@dataclass
class SweepWork:
    """Everything one point needs; calling it with a SweepPoint (ratio, scope, norm set) fills
    in the rest. Picklable, so a Ray worker can receive it once and run many points."""

    task: TaskDelta
    base: BaseModel
    backbone: Backbone
    test: CachedData
    train: CachedData | None
    config: object  # a trainer TrainConfig
    round_to: int | None
    input_size: tuple[int, int] | None

    def __call__(self, point: SweepPoint) -> SweepPoint:
        point = SweepPoint(point.ratio, point.scope, point.norm)
        try:
            result = prune_task(self.task, self.base, PruneOptions(point.ratio, point.norm, point.scope, self.round_to),
                                backbone=self.backbone, input_size=self.input_size)
        except SubtuneError as e:
            point.error = str(e)
            return point
        point.params_kept, point.flops_kept = result.report["params_kept"], result.report["flops_kept"]
        point.accuracy = point.accuracy_pruned = accuracy(result.task, self.backbone, self.test)
        if self.train is not None:
            trained = recover(result.task, self.base, self.backbone, self.train, self.config)
            point.accuracy = accuracy(trained, self.backbone, self.test)
        return point


class SerialPoints:
    def __init__(self, work: SweepWork):
        self.work = work

    def run(self, items: list, on_done) -> None:
        for item in items:
            on_done(item, self.work(item))


def run_sweep(task: TaskDelta, base: BaseModel, backbone: Backbone, test: CachedData, *,
              train: CachedData | None = None, config=None, ratios=RATIOS, scopes=SCOPES, norms=tuple(NORMS),
              round_to: int | None = None, input_size: tuple[int, int] | None = None, on_point=None,
              executor=None) -> Sweep:
    """Every ratio x scope x norm; with `train`, each pruned task is recovery-trained first
    (`config`: a trainer TrainConfig). `backbone` must be frozen. `executor(work)` builds the
    executor for a SweepWork (default: SerialPoints)."""
    from subtune.training.trainer import TrainConfig

    config = config or TrainConfig()
    sweep = Sweep(task.name, list(task.blocks), accuracy(task, backbone, test),
                  config.to_meta() if train is not None else None, round_to)
    work = SweepWork(task, base, backbone, test, train, config, round_to, input_size)
    todo = [SweepPoint(ratio, scope, norm) for scope in scopes for norm in norms for ratio in ratios]
    done: dict[tuple, SweepPoint] = {}

    def finished(item: SweepPoint, point: SweepPoint) -> None:
        done[(item.ratio, item.scope, item.norm)] = point
        if on_point:
            on_point(point)

    (executor or SerialPoints)(work).run(todo, finished)
    sweep.points = [done[(p.ratio, p.scope, p.norm)] for p in todo]
    return sweep


def best_per_bin(points: list[SweepPoint], width: float = 0.05) -> list[SweepPoint]:
    """The paper's Figure 7: the most accurate point in every `width` range of parameters kept."""
    best: dict[int, SweepPoint] = {}
    for p in points:
        if p.error is None:
            k = math.floor(p.params_kept / width)
            if k not in best or p.accuracy > best[k].accuracy:
                best[k] = p
    return [best[k] for k in sorted(best)]


def sweep_table(sweep: Sweep) -> str:
    rows = [f"{'scope':<7} {'norm':<4} {'ratio':>5} {'params kept':>11} {'FLOPs kept':>10} "
            f"{'acc pruned':>10} {'acc':>7}"]
    for p in sweep.points:
        if p.error:
            rows.append(f"{p.scope:<7} {p.norm:<4} {p.ratio:>5.1f}  skipped: {p.error}")
        else:
            rows.append(f"{p.scope:<7} {p.norm:<4} {p.ratio:>5.1f} {p.params_kept:>11.3f} {p.flops_kept:>10.3f} "
                        f"{p.accuracy_pruned:>10.4f} {p.accuracy:>7.4f}")
    rows.append(f"unpruned accuracy {sweep.accuracy_unpruned:.4f}")
    return "\n".join(rows)


def plot_sweep(sweep: Sweep, path) -> None:
    """Accuracy against the fraction of SubTuning parameters kept, one line per scope x norm, with
    the best-per-5% envelope and the unpruned accuracy (like the paper's Figures 7 and 16)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from subtune.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for scope in SCOPES:
        for norm in NORMS:
            pts = sorted((p for p in sweep.points if p.scope == scope and p.norm == norm and p.error is None),
                         key=lambda p: p.params_kept)
            if pts:
                ax.plot([p.params_kept for p in pts], [p.accuracy for p in pts], marker="o", ms=3, lw=1,
                        label=f"{scope.capitalize()} {norm.upper()}")
    best = best_per_bin(sweep.points)
    if best:
        ax.plot([p.params_kept for p in best], [p.accuracy for p in best], color="black", lw=2, alpha=0.5,
                label="best per 5% of parameters")
    ax.axhline(sweep.accuracy_unpruned, color="gray", ls="--", lw=1, label="unpruned")
    ax.set_xlabel("fraction of SubTuning parameters kept")
    ax.set_ylabel("accuracy" + (" (after recovery training)" if sweep.recovery else " (no recovery training)"))
    ax.set_title(f"Pruning task {sweep.task}, blocks {sweep.blocks[0]}-{sweep.blocks[-1]}"
                 + (f", round_to {sweep.round_to}" if sweep.round_to else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
