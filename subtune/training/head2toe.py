"""Head2Toe (Evci et al., 2022): a linear head on features pooled from many layers of the frozen
base, chosen by group-lasso importance.

    1. Taps: the base's activations after the stem, after every chosen block and at the features
       (points in network.py's numbering), each average-pooled to a small grid (default 2x2,
       smaller where the map is smaller) and flattened; token sequences averaged over tokens.
       One forward pass per split gives the whole feature matrix, which is kept.
    2. Importance: a linear head on the standardised features, fitted with a group-lasso
       penalty lambda * sum_j ||W[:, j]||_2 (one group per feature: its weights to every class;
       lambda set relative to the value that zeroes every group); a feature's importance is its
       group's norm.
    3. Selection: the `budget` most important features (ties to the lower index), for each
       budget asked; a fresh linear head on each selection; the budget with the best validation
       accuracy wins (Head2Toe chooses its feature fraction on validation data too).
    4. Deployment: the standardisation is folded into the head, so the task file holds only the
       taps, the selected indices and an ordinary linear head (delta.TaskDelta, kind "tap").

The selection is deterministic (full-batch proximal gradient); the final heads are seeded (their
initialisation and batch order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from subtune.delta.modules import grid_pool, tap_activations
from subtune.delta.standalone import TapTaskNet
from subtune.errors import SubtuneError
from subtune.models import Backbone

DEFAULT_GRID = 2
DEFAULT_BUDGETS = (256, 1024, 4096)
DEFAULT_GROUP_LASSO = 0.05  # of lambda_max: see group_lasso_importance


def default_points(backbone: Backbone, blocks: list[int] | None = None) -> list[int]:
    """The stem's output, the output of every chosen block (default: all) and the features."""
    n = backbone.num_blocks
    blocks = list(range(1, n + 1)) if blocks is None else sorted(set(blocks))
    return sorted({1, *(b + 1 for b in blocks), n + 2})


def tap_specs(backbone: Backbone, points: list[int], grid: int, input_size: tuple[int, int]) -> list[dict]:
    """[{"point", "grid", "dim"}] for the task file; a feature map smaller than the grid is
    pooled to its own size (no bin repeats a pixel)."""
    if grid < 1:
        raise SubtuneError(f"`tap_grid` must be at least 1, found {grid}")
    acts = tap_activations(backbone, torch.zeros(1, 3, *input_size), points)
    specs = []
    for p in points:
        a = acts[p]
        g = [min(grid, int(a.shape[2])), min(grid, int(a.shape[3]))] if a.dim() == 4 else None
        specs.append({"point": p, "grid": g, "dim": int(grid_pool(a, g).shape[1])})
    return specs


@torch.no_grad()
def extract_features(backbone: Backbone, dataset, specs: list[dict], batch_size: int = 256) -> torch.Tensor:
    """[images, sum of dims]: every tap pooled and concatenated, in the order of `specs`."""
    from subtune.training.network import fast_layout

    points = [s["point"] for s in specs]
    out = []
    for lo in range(0, len(dataset), batch_size):
        x = fast_layout(dataset.batch(np.arange(lo, min(lo + batch_size, len(dataset)))))
        acts = tap_activations(backbone, x, points)
        out.append(torch.cat([grid_pool(acts[s["point"]], s["grid"]) for s in specs], dim=1))
    return torch.cat(out)


@dataclass
class Standardizer:
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> "Standardizer":
        return cls(x.mean(0), x.std(0).clamp_min(1e-6))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _train_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, epochs: int, lr: float,
                  weight_decay: float, batch_size: int, seed: int, group_lasso: float = 0.0) -> nn.Linear:
    """AdamW on a linear head over fixed features, cosine schedule per step; with `group_lasso`,
    plus lambda * sum_j ||W[:, j]||_2 (and no weight decay on W)."""
    from subtune.training.network import new_head
    from subtune.training.data import batch_order

    head = new_head(x.shape[1], num_classes, seed)
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    steps = max(1, len(batch_order(n, batch_size, torch.Generator().manual_seed(0))) * epochs)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0 if group_lasso else weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    for _ in range(epochs):
        for idx in batch_order(n, batch_size, g):
            idx = torch.from_numpy(idx)
            loss = F.cross_entropy(head(x[idx]), y[idx])
            if group_lasso:
                loss = loss + group_lasso * head.weight.norm(dim=0).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


def group_lasso_importance(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, strength: float = DEFAULT_GROUP_LASSO,
                           iterations: int = 300, tol: float = 1e-6) -> torch.Tensor:
    """Each feature's importance after fitting a linear head on standardised `x` with the
    group-lasso penalty lambda * sum_j ||W[:, j]||_2 (mean cross-entropy; bias unpenalised).

    `strength` is lambda as a fraction of lambda_max, the smallest lambda at which every group
    is zero (the largest gradient group norm at W = 0), so one setting means the same on any
    data. Solved full batch by FISTA (accelerated proximal gradient, step 1/L with L bounding
    the loss's curvature, from a power iteration): deterministic, with exact zeros. Importance
    ranks by the group norm ||W[:, j]||; features left at zero rank after every non-zero one, by
    their gradient norm at the solution (how close each is to entering)."""
    if not 0 < strength < 1:
        raise SubtuneError(f"`group_lasso` must be in (0, 1) (a fraction of the strength that zeroes every feature), "
                           f"found {strength}")
    x = x.double()
    n, d = x.shape
    onehot = F.one_hot(y.long(), num_classes).double()

    def grads(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = (torch.softmax(x @ w.T + b, dim=1) - onehot) / n  # d(mean CE)/d(logits)
        return r.T @ x, r.sum(0)

    b = torch.log(onehot.mean(0).clamp_min(1e-12))  # the best bias-only head
    b = b - b.mean()
    gw, _ = grads(torch.zeros(num_classes, d, dtype=x.dtype), b)
    lam = strength * float(gw.norm(dim=0).max())
    v = torch.ones(d + 1, dtype=x.dtype) / math.sqrt(d + 1)  # power iteration on [x 1]^T [x 1] / n
    xa = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], dim=1)
    for _ in range(30):
        v = xa.T @ (xa @ v) / n
        v = v / v.norm().clamp_min(1e-30)
    lipschitz = 0.5 * float(v @ (xa.T @ (xa @ v)) / n) * 1.05 + 1e-12  # softmax Hessian <= 1/2 * I per sample
    step = 1.0 / lipschitz
    w = torch.zeros(num_classes, d, dtype=x.dtype)
    yw, yb, t = w.clone(), b.clone(), 1.0
    for _ in range(iterations):
        gw, gb = grads(yw, yb)
        z = yw - step * gw
        norms = z.norm(dim=0, keepdim=True)
        w_new = z * (1 - step * lam / norms.clamp_min(1e-30)).clamp_min(0)  # group soft-threshold
        b_new = yb - step * gb
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        yw = w_new + (t - 1) / t_new * (w_new - w)
        yb = b_new + (t - 1) / t_new * (b_new - b)
        change = float((w_new - w).norm()) / max(float(w_new.norm()), 1e-12)
        w, b, t = w_new, b_new, t_new
        if change < tol:
            break
    group = w.norm(dim=0)
    gw, _ = grads(w, b)
    near = gw.norm(dim=0)
    # one key: non-zero groups by their norm, above zero groups by their gradient norm (<= lambda)
    return torch.where(group > 0, group + lam + 1.0, near / max(lam, 1e-30)).float()


def select_top(importance: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices of the `budget` largest importances (ties to the lower index), ascending."""
    if budget < 1:
        raise SubtuneError(f"`feature_budget` must be at least 1, found {budget}")
    order = torch.sort(-importance, stable=True).indices[: min(budget, len(importance))]
    return torch.sort(order).values


def parse_budgets(text: str | None) -> list[int]:
    if not text:
        return list(DEFAULT_BUDGETS)
    try:
        budgets = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise SubtuneError(f"`feature_budget` {text!r}: expected a number of features or a list like 256,1024") from None
    if not budgets or budgets[0] < 1:
        raise SubtuneError(f"`feature_budget` {text!r}: expected positive numbers of features")
    return budgets


def fold_head(head: nn.Linear, std: Standardizer, select: torch.Tensor) -> nn.Linear:
    """A head on raw selected features equal to `head` on standardised ones."""
    mean, sd = std.mean[select], std.std[select]
    folded = nn.Linear(head.in_features, head.out_features)
    with torch.no_grad():
        folded.weight.copy_(head.weight / sd)
        folded.bias.copy_(head.bias - (head.weight / sd) @ mean)
    return folded.eval()


def drop_unused_taps(specs: list[dict], select: torch.Tensor) -> tuple[list[dict], torch.Tensor]:
    """Taps none of whose features were selected are dropped (the graph then never pools
    them) and the selection is renumbered to the remaining concatenation."""
    kept, new_index, offset, start = [], [], 0, 0
    for s in specs:
        stop = start + s["dim"]
        inside = select[(select >= start) & (select < stop)]
        if len(inside):
            kept.append(s)
            new_index.append(inside - start + offset)
            offset += s["dim"]
        start = stop
    return kept, torch.cat(new_index)


# The network a Head2Toe (or linear-probe) task runs: the one tap-task model of subtune.delta.standalone.
TapNet = TapTaskNet
