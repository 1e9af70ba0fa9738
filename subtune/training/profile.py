"""The finetuning profile (paper §2): train each consecutive window of blocks on its own and
record validation accuracy, trainable parameters and time; optionally the linear-probe and
full-finetuning baselines. Windows are visited front to back, so the activation cache walks
down the network one frozen block at a time."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

from subtune.errors import SubtuneError
from subtune.training.trainer import Trainer, TrainResult

PROFILE_FORMAT = "subtune.profile/1"


def aggregate(runs: list[TrainResult]) -> dict:
    """One profile entry from runs that differ only in seed: means, spreads and each run."""
    val = [r.val_accuracy for r in runs]
    out = {"blocks": [runs[0].blocks[0], runs[0].blocks[-1]] if runs[0].blocks else [],
           "accuracy": statistics.fmean(val), "accuracy_std": _std(val), "params": runs[0].params,
           "seconds": statistics.fmean(r.seconds for r in runs), "cached": runs[0].cached,
           "runs": [r.summary() for r in runs]}
    if all(r.test_accuracy is not None for r in runs):
        test = [r.test_accuracy for r in runs]
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

    @property
    def best(self) -> dict:
        return max(self.entries, key=lambda e: (e["accuracy"], e["blocks"][0]))


def windows(num_blocks: int, window: int, starts: list[int] | None = None) -> list[list[int]]:
    if window < 1 or window > num_blocks:
        raise SubtuneError(f"--window {window}: expected 1..{num_blocks}")
    firsts = starts or list(range(1, num_blocks - window + 2))
    bad = [f for f in firsts if f < 1 or f + window - 1 > num_blocks]
    if bad:
        raise SubtuneError(f"windows starting at {bad} do not fit: blocks 1..{num_blocks}, window {window}")
    return [list(range(f, f + window)) for f in sorted(firsts)]


def run_profile(trainer: Trainer, *, window: int = 1, seeds: list[int] | None = None, starts: list[int] | None = None,
                siamese: bool = False, baselines: bool = False,
                on_entry: Callable[[str, dict], None] | None = None) -> Profile:
    seeds = seeds or [trainer.config.seed]
    began = time.perf_counter()
    prof = Profile(window, list(seeds), siamese)
    for blocks in windows(trainer.backbone.num_blocks, window, starts):
        entry = aggregate([trainer.subtune(blocks, siamese=siamese, seed=s) for s in seeds])
        prof.entries.append(entry)
        if on_entry:
            on_entry(_span(blocks), entry)
    if baselines:
        for name, run in (("linear", trainer.linear), ("full", trainer.full)):
            entry = aggregate([run(seed=s) for s in seeds])
            prof.baselines[name] = entry
            if on_entry:
                on_entry(name, entry)
    prof.seconds = time.perf_counter() - began
    prof.cache_seconds = trainer.cache_seconds
    return prof


def profile_to_json(prof: Profile, *, context: dict) -> dict:
    best = prof.best
    return {"format": PROFILE_FORMAT, **context, "window": prof.window, "seeds": prof.seeds, "siamese": prof.siamese,
            "metric": "validation accuracy ('accuracy'); test_accuracy is reported, never used to choose",
            "entries": prof.entries, "baselines": prof.baselines,
            "best": {"blocks": best["blocks"], "accuracy": best["accuracy"]},
            "seconds": round(prof.seconds, 2), "cache_seconds": round(prof.cache_seconds, 2)}


def _span(blocks: list[int]) -> str:
    return f"{blocks[0]}-{blocks[-1]}" if len(blocks) > 1 else str(blocks[0])
