"""The finetuning profile (paper §2): train each consecutive window of blocks on its own and
record validation accuracy, trainable parameters and time; optionally baselines beside the
windows: the linear probe, Head2Toe, LoRA on every block, full finetuning (BASELINES).

The unit of work is one run, a `RunSpec` (mode, blocks, seed): `run_one(trainer, spec)` trains
it and returns a JSON-able result dict. Where runs execute is a policy, an *executor*: an
object with `run(specs, on_done)` that calls `on_done(spec, result)` as each run finishes, in
any order. `SerialExecutor` (here) runs them in this process, front to back, so the activation
cache walks down the network one frozen block at a time; `subtune.sweeps.RayExecutor` runs
them as Ray tasks. The profile is assembled from the results in spec order, so every executor
gives the same JSON for the same results.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

from subtune.errors import SubtuneError
from subtune.models.blocks import block_span
from subtune.training.trainer import Trainer, TrainResult

PROFILE_FORMAT = "subtune.profile/1"
MODES = ("subtune", "linear", "full", "head2toe", "lora")
# Runs of a profile besides its windows: one entry each, averaged over the seeds. "lora" is LoRA on
# every block (merged: a window over the whole network); LoRA inside a window is `train --mode lora`.
BASELINES = ("linear", "head2toe", "lora", "full")
DEFAULT_BASELINES = ("linear", "full")


@dataclass(frozen=True)
class RunSpec:
    """One training run. `test=False` leaves the test split alone (selection runs)."""

    mode: str  # "subtune" | "linear" | "full" | "head2toe" | "lora" (every block)
    blocks: tuple[int, ...] = ()
    seed: int = 0
    siamese: bool = False
    test: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}")  # a bug: specs are built in code
        if (self.mode == "subtune") != bool(self.blocks):
            raise ValueError(f"{self.mode} run with blocks {self.blocks}")

    @property
    def key(self) -> str:
        """A file-name-safe name, unique per run: `subtune_3-4_seed0`, `linear_seed1`."""
        blocks = f"_{block_span(list(self.blocks))}" if self.blocks else ""
        siamese, test = "_siamese" if self.siamese else "", "" if self.test else "_notest"
        return f"{self.mode}{blocks}{siamese}_seed{self.seed}{test}"

    @property
    def group(self) -> str:
        """What the run is averaged with over seeds: the profile row's label."""
        return block_span(list(self.blocks)) if self.mode == "subtune" else self.mode

    def to_json(self) -> dict:
        return {"mode": self.mode, "blocks": list(self.blocks), "seed": self.seed, "siamese": self.siamese,
                "test": self.test}

    @classmethod
    def from_json(cls, d: dict) -> "RunSpec":
        return cls(d["mode"], tuple(d["blocks"]), int(d["seed"]), bool(d["siamese"]), bool(d["test"]))


def run_one(trainer: Trainer, spec: RunSpec) -> dict:
    """Train one run and return its summary (no weights) and last-epoch training loss: the same
    function on every executor."""
    if spec.mode == "subtune":
        result = trainer.subtune(list(spec.blocks), siamese=spec.siamese, seed=spec.seed, test=spec.test)
    elif spec.mode == "linear":
        result = trainer.linear(seed=spec.seed, test=spec.test)
    elif spec.mode == "head2toe":
        result = trainer.head2toe(seed=spec.seed, test=spec.test)
    elif spec.mode == "lora":
        result = trainer.lora(None, seed=spec.seed, test=spec.test)
    else:
        result = trainer.full(seed=spec.seed)
    # Head2Toe fits its head on pooled features (no epoch history): no training loss to report
    return {**result.summary(), "train_loss": result.history[-1]["loss"] if result.history else None}


class Executor(Protocol):
    def describe(self) -> str: ...

    def run(self, specs: list[RunSpec], on_done: Callable[[RunSpec, dict], None]) -> None: ...


class SerialExecutor:
    """Every run in this process, in the order given."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def describe(self) -> str:
        return "serial, this process"

    def run(self, specs: list[RunSpec], on_done: Callable[[RunSpec, dict], None]) -> None:
        for spec in specs:
            on_done(spec, run_one(self.trainer, spec))


def aggregate(runs: list[TrainResult | dict]) -> dict:
    """One profile entry from runs that differ only in seed: means, spreads and each run
    (TrainResults or their summaries)."""
    runs = [r.summary() if isinstance(r, TrainResult) else r for r in runs]
    val = [r["val_accuracy"] for r in runs]
    out = {"blocks": list(runs[0]["blocks"]), "accuracy": statistics.fmean(val), "accuracy_std": _std(val),
           "params": runs[0]["params"], "seconds": statistics.fmean(r["seconds"] for r in runs),
           "cached": runs[0]["cached"], "runs": runs}
    if all(r.get("test_accuracy") is not None for r in runs):
        test = [r["test_accuracy"] for r in runs]
        out.update(test_accuracy=statistics.fmean(test), test_accuracy_std=_std(test))
    return out


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


@dataclass
class Profile:
    window: int
    seeds: list[int]
    siamese: bool
    entries: list[dict] = field(default_factory=list)
    baselines: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    cache_seconds: float = 0.0
    resumed: int = 0  # runs taken from an earlier, interrupted profile
    executor: str = "serial, this process"

    @property
    def best(self) -> dict:
        return max(self.entries, key=lambda e: (e["accuracy"], e["blocks"][0]))


def windows(num_blocks: int, window: int, starts: list[int] | None = None) -> list[list[int]]:
    if window < 1 or window > num_blocks:
        raise SubtuneError(f"`window` {window}: expected 1..{num_blocks}")
    firsts = starts or list(range(1, num_blocks - window + 2))
    bad = [f for f in firsts if f < 1 or f + window - 1 > num_blocks]
    if bad:
        raise SubtuneError(f"windows starting at {bad} do not fit: blocks 1..{num_blocks}, window {window}")
    return [list(range(f, f + window)) for f in sorted(firsts)]


def profile_specs(num_blocks: int, *, window: int = 1, seeds: Iterable[int] = (0,), starts: list[int] | None = None,
                  siamese: bool = False, baselines: "bool | Iterable[str]" = False) -> list[RunSpec]:
    """Every run of a profile, windows front to back, then the baselines; seeds innermost.
    `baselines`: True for DEFAULT_BASELINES, or the names of BASELINES to run."""
    specs = [RunSpec("subtune", tuple(b), s, siamese) for b in windows(num_blocks, window, starts) for s in seeds]
    specs += [RunSpec(mode, (), s) for mode in baseline_names(baselines) for s in seeds]
    return specs


def baseline_names(baselines: "bool | str | Iterable[str] | None") -> list[str]:
    """False/None: none; True: DEFAULT_BASELINES; "linear,head2toe" or a list: those, in BASELINES' order."""
    if not baselines:
        return []
    if baselines is True:
        return list(DEFAULT_BASELINES)
    names = [b.strip() for b in baselines.split(",")] if isinstance(baselines, str) else [str(b) for b in baselines]
    names = [b for b in names if b]
    unknown = [b for b in names if b not in BASELINES]
    if unknown or not names:
        raise SubtuneError(f"`baselines` {','.join(names) or '(empty)'}: expected a comma list of "
                           f"{', '.join(BASELINES)} (e.g. linear,head2toe)")
    return [b for b in BASELINES if b in names]


def run_profile(trainer: Trainer, *, window: int = 1, seeds: list[int] | None = None, starts: list[int] | None = None,
                siamese: bool = False, baselines: "bool | Iterable[str]" = False,
                on_entry: Callable[[str, dict], None] | None = None, executor: Executor | None = None,
                done: dict[str, dict] | None = None,
                on_run: Callable[[RunSpec, dict], None] | None = None) -> Profile:
    """`done`: results of runs already finished (by key), which are not run again. `on_run` sees
    each new result as it arrives (to save it); `on_entry` each profile row once all its seeds
    are in."""
    seeds = list(seeds or [trainer.config.seed])
    executor = executor or SerialExecutor(trainer)
    began = time.perf_counter()
    specs = profile_specs(trainer.backbone.num_blocks, window=window, seeds=seeds, starts=starts, siamese=siamese,
                          baselines=baselines)
    results = {s.key: done[s.key] for s in specs if done and s.key in done}
    groups: dict[str, list[RunSpec]] = {}
    for s in specs:
        groups.setdefault(s.group, []).append(s)
    reported: set[str] = set()

    def report_complete() -> None:
        for label, members in groups.items():
            if label not in reported and all(m.key in results for m in members):
                reported.add(label)
                if on_entry:
                    on_entry(label, aggregate([results[m.key] for m in members]))

    def finished(spec: RunSpec, result: dict) -> None:
        results[spec.key] = result
        if on_run:
            on_run(spec, result)
        report_complete()

    prof = Profile(window, seeds, siamese, resumed=len(results), executor=executor.describe())
    report_complete()
    executor.run([s for s in specs if s.key not in results], finished)
    missing = [s.key for s in specs if s.key not in results]
    if missing:
        raise RuntimeError(f"the executor returned without runs {missing}")  # a bug in the executor
    for label, members in groups.items():
        entry = aggregate([results[m.key] for m in members])
        if members[0].mode == "subtune":
            prof.entries.append(entry)
        else:
            prof.baselines[label] = entry
    prof.seconds = time.perf_counter() - began
    prof.cache_seconds = trainer.cache_seconds
    return prof


def window_scorer(executor: Executor, *, seeds: list[int], siamese: bool = False,
                  done: dict[str, dict] | None = None,
                  on_run: Callable[[RunSpec, dict], None] | None = None) -> Callable[[list[list[int]]], list[float]]:
    """Greedy selection's `score_many`: every candidate window x seed as one batch of runs on
    `executor` (test split untouched), scored by mean validation accuracy. Finished runs are
    kept in `done` (by key) and never run twice."""
    done = {} if done is None else done

    def score_many(candidates: list[list[int]]) -> list[float]:
        specs = [RunSpec("subtune", tuple(b), s, siamese, test=False) for b in candidates for s in seeds]

        def finished(spec: RunSpec, result: dict) -> None:
            done[spec.key] = result
            if on_run:
                on_run(spec, result)

        executor.run([s for s in specs if s.key not in done], finished)
        return [statistics.fmean(done[RunSpec("subtune", tuple(b), s, siamese, test=False).key]["val_accuracy"]
                                 for s in seeds) for b in candidates]

    return score_many


def profile_to_json(prof: Profile, *, context: dict) -> dict:
    best = prof.best
    return {"format": PROFILE_FORMAT, **context, "window": prof.window, "seeds": prof.seeds, "siamese": prof.siamese,
            "metric": "validation accuracy ('accuracy'); test_accuracy is reported, never used to choose",
            "entries": prof.entries, "baselines": prof.baselines,
            "best": {"blocks": best["blocks"], "accuracy": best["accuracy"]},
            "executor": prof.executor, "resumed_runs": prof.resumed,
            "seconds": round(prof.seconds, 2), "cache_seconds": round(prof.cache_seconds, 2)}
