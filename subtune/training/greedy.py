"""Greedy block selection (the slides' SubTuning algorithm; paper §7).

A policy over a scoring callback, so it can be tested without training anything:

    1. Score every single block; take the best (a tie goes to the deeper block, which forks
       later and costs less to run).
    2. Try growing the set by one block at either end (sets stay consecutive, as SubTuning
       deploys them); take the best.
    3. Stop when the best gain over the current set is below epsilon, or at max_blocks.

Each step's candidates are independent: `score_many(candidates) -> scores` scores them together
(e.g. as parallel Ray tasks, `training.profile.window_scorer`); without it `score` is called on
each in turn. Scores come from a validation split: the caller's job, and never the test set. Step 1 always
keeps a block (a task needs one); when even the best block does not beat `start_score` (the
linear probe) by epsilon, the path says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from subtune.models.blocks import block_span


@dataclass
class GreedyStep:
    candidates: list[tuple[list[int], float]]
    chosen: list[int]
    score: float
    gain: float | None  # None: nothing to compare the first block with
    accepted: bool

    def to_json(self) -> dict:
        return {"candidates": [{"blocks": [b[0], b[-1]], "score": s} for b, s in self.candidates],
                "chosen": [self.chosen[0], self.chosen[-1]], "score": self.score, "gain": self.gain,
                "accepted": self.accepted}


@dataclass
class GreedyPath:
    epsilon: float
    max_blocks: int
    start_score: float | None
    steps: list[GreedyStep] = field(default_factory=list)
    selected: list[int] = field(default_factory=list)
    score: float = 0.0
    beats_start: bool = True

    def describe(self) -> list[str]:
        lines = [] if self.start_score is None else [f"start: no blocks (linear probe) {self.start_score:.4f}"]
        for i, s in enumerate(self.steps, 1):
            gain = "n/a" if s.gain is None else f"{s.gain:+.4f}"
            verdict = "accepted" if s.accepted else f"stop: gain {gain} < epsilon {self.epsilon}"
            if s.accepted and not path_beats(self, i):
                verdict = f"kept (a task needs a block), but it does not beat the linear probe by epsilon {self.epsilon}"
            lines.append(f"step {i}: best {block_span(s.chosen)} {s.score:.4f} (gain {gain}, "
                         f"{len(s.candidates)} candidates) -> {verdict}")
        lines.append(f"selected blocks {block_span(self.selected)} (validation score {self.score:.4f})")
        return lines

    def to_json(self) -> dict:
        return {"epsilon": self.epsilon, "max_blocks": self.max_blocks, "start_score": self.start_score,
                "steps": [s.to_json() for s in self.steps], "selected": [self.selected[0], self.selected[-1]],
                "score": self.score, "beats_linear_probe": self.beats_start}


def greedy_select(score: Callable[[list[int]], float] | None, num_blocks: int, *, epsilon: float = 0.005,
                  max_blocks: int = 3, start_score: float | None = None,
                  score_many: Callable[[list[list[int]]], list[float]] | None = None) -> GreedyPath:
    if score is None and score_many is None:
        raise ValueError("greedy_select needs score or score_many")
    path = GreedyPath(epsilon, max_blocks, start_score)
    current: list[int] = []
    current_score = start_score
    while len(current) < min(max_blocks, num_blocks):
        if current:
            options = ([[current[0] - 1] + current] if current[0] > 1 else []) + \
                      ([current + [current[-1] + 1]] if current[-1] < num_blocks else [])
        else:
            options = [[b] for b in range(1, num_blocks + 1)]
        scores = score_many(options) if score_many else [score(blocks) for blocks in options]
        scored = [(blocks, float(s)) for blocks, s in zip(options, scores, strict=True)]
        best_blocks, best = max(scored, key=lambda bs: (bs[1], bs[0][0]))
        gain = best - current_score if current_score is not None else None
        beats = gain is None or gain >= epsilon
        accepted = beats or not current  # the first block is always kept
        path.steps.append(GreedyStep(scored, best_blocks, best, gain, accepted))
        if not current:
            path.beats_start = beats
        if not accepted:
            break
        current, current_score = best_blocks, best
    path.selected, path.score = current, float(current_score)
    return path


def path_beats(path: GreedyPath, step: int) -> bool:
    return step != 1 or path.beats_start
