"""Policy: how many channels of each group to keep, and which (no model is touched here).

Rules, for a pruning ratio r in (0, 1):
  1. Local scope: every group keeps floor(size * (1 - r)) of its channels, the most important.
  2. Global scope: the channel scores of all groups of a task's tuned blocks (each normalised to
     mean 1 within its group) are ranked together, and the floor(total * (1 - r)) best are kept,
     however many that leaves each group (the paper's "global pruning").
  3. Attention heads are ranked the same way, in a scope of their own (whole heads).
  4. round_to: a group's kept channel count is rounded down to a multiple of round_to, but never
     below round_to (or the group's size, if smaller); the most important channels stay. Heads
     are not rounded.
  5. A group left with nothing is an error, raised before anything is pruned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from subtune.errors import SubtuneError
from subtune.pruning.analysis import HEADS, ChannelGroup

NORMS = {"l1": 1, "l2": 2}
SCOPES = ("local", "global")


@dataclass(frozen=True)
class PruneOptions:
    ratio: float
    norm: str = "l2"
    scope: str = "local"
    round_to: int | None = None
    heads: bool = True  # ViT: prune attention heads as well as MLP width

    def check(self) -> "PruneOptions":
        """Raise SubtuneError on options that cannot work, before any work is done."""
        if not (isinstance(self.ratio, (int, float)) and 0 < self.ratio < 1):
            raise SubtuneError(f"pruning ratio {self.ratio}: expected a fraction of channels to remove, "
                               "strictly between 0 and 1")
        if self.norm not in NORMS:
            raise SubtuneError(f"pruning norm {self.norm!r}: expected one of {', '.join(NORMS)}")
        if self.scope not in SCOPES:
            raise SubtuneError(f"pruning scope {self.scope!r}: expected one of {', '.join(SCOPES)}")
        if self.round_to is not None and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise SubtuneError(f"round_to {self.round_to}: expected a positive channel count such as 8")
        return self

    @property
    def p(self) -> int:
        return NORMS[self.norm]

    def to_json(self) -> dict:
        return asdict(self)


def plan_pruning(groups: list[ChannelGroup], options: PruneOptions) -> dict[tuple[int, str, str], list[int]]:
    """(block, kind, layer) -> sorted indices to keep, for every group."""
    keep: dict[tuple[int, str, str], list[int]] = {}
    for kind in ("channels", HEADS):
        scope = [g for g in groups if g.kind == kind and (kind != HEADS or options.heads)]
        if not scope:
            continue
        counts = _global_counts(scope, options.ratio) if options.scope == "global" else [
            _floor_keep(g.size, options.ratio) for g in scope]  # rule 1
        for g, n in zip(scope, counts):
            if n == 0:  # rule 5
                what = "attention head" if kind == HEADS else "channel"
                hint = "a lower ratio or local scope" if options.scope == "global" else "a lower ratio"
                raise SubtuneError(f"pruning ratio {options.ratio} ({options.scope}) would remove every {what} of "
                                   f"block {g.block} {g.layer} ({g.size} {what}s); use {hint}")
            if kind != HEADS and options.round_to:  # rule 4
                n = max(n - n % options.round_to, min(options.round_to, g.size))
            keep[(g.block, kind, g.layer)] = _top(g.importance, n)
    return keep


def _floor_keep(size: int, ratio: float) -> int:
    return math.floor(size * (1 - ratio) + 1e-9)


def _global_counts(scope: list[ChannelGroup], ratio: float) -> list[int]:
    """Rule 2 (and 3): how many of each group's channels rank among the best overall."""
    scores = torch.cat([g.importance for g in scope])
    owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(scope)])
    n_keep = _floor_keep(len(scores), ratio)
    best = torch.argsort(scores, descending=True, stable=True)[:n_keep]
    counts = torch.bincount(owner[best], minlength=len(scope))
    return [int(c) for c in counts]


def _top(importance: torch.Tensor, n: int) -> list[int]:
    order = torch.argsort(importance, descending=True, stable=True)[:n]
    return sorted(int(i) for i in order)
