"""Active learning by classification margin (paper §4.2 and Appendix A).

margin(x) = P(y1|x) - P(y2|x), the gap between the two most probable classes; the examples
with the smallest margins (the least certain) are the ones to label next. The frozen prefix
runs once over the pool (cached activations), so only the task's blocks run per example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Margins:
    margin: np.ndarray  # (N,) P(y1|x) - P(y2|x)
    predicted: np.ndarray  # (N,) y1
    p1: np.ndarray
    p2: np.ndarray


def margins(logits: torch.Tensor) -> Margins:
    probs = logits.double().softmax(dim=1)
    top = probs.topk(2, dim=1)
    p1, p2 = top.values[:, 0], top.values[:, 1]
    return Margins((p1 - p2).numpy(), top.indices[:, 0].numpy(), p1.numpy(), p2.numpy())


def pick_smallest_margins(m: Margins, budget: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Positions of the `budget` smallest margins, smallest first (ties: pool order), skipping
    positions where `exclude` is True."""
    candidates = np.arange(len(m.margin)) if exclude is None else np.flatnonzero(~exclude)
    order = candidates[np.argsort(m.margin[candidates], kind="stable")]
    return order[:budget]
