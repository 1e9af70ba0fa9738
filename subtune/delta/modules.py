"""A task delta as PyTorch modules: its tuned blocks (rebuilt smaller where pruned), its head,
and, for tap tasks (Head2Toe, the linear probe), the pooled taps on the base's own activations.

Everything that runs a task -- the compiler's lowering and reference, training, pruning, the
benchmarks -- builds its modules here, so those packages depend on this one and not on each other.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from subtune.delta.pruned import pruned_blocks, rebuild_block

if TYPE_CHECKING:
    from subtune.delta.task import TaskDelta
    from subtune.models import Backbone


def task_blocks(task: TaskDelta, backbone: Backbone) -> nn.ModuleList:
    """Copies of the base blocks carrying the task's weights (rebuilt smaller where pruned)."""
    pruned = pruned_blocks(task.meta)
    blocks = nn.ModuleList()
    for b in task.blocks:
        if str(b) in pruned:
            blocks.append(rebuild_block(backbone.blocks[b - 1], task.block_state[str(b)], pruned[str(b)]))
            continue
        block = copy.deepcopy(backbone.blocks[b - 1])
        block.load_state_dict(task.block_state[str(b)], strict=True)
        blocks.append(block.eval())
    return blocks


def task_head(task: TaskDelta) -> nn.Linear:
    w = task.head["weight"]
    head = nn.Linear(w.shape[1], w.shape[0])
    head.load_state_dict({"weight": w, "bias": task.head["bias"]})
    return head.eval()


# ---------------------------------------------------------------------- taps


def grid_pool(x: torch.Tensor, grid: list[int] | tuple[int, int] | None) -> torch.Tensor:
    """One tap's pooled representation, [batch, D]: a feature map [B, C, H, W] average-pooled to
    `grid` (as adaptive average pooling bins it) and flattened channel-major; a token sequence
    [B, T, D] averaged over its tokens; features [B, D] as they are. Spatial sizes are fixed in
    an export, so the bins are constants: one AveragePool when they tile evenly, else a
    ReduceMean per bin."""
    if x.dim() == 2:
        return x
    if x.dim() == 3:
        return x.mean(dim=1)
    gh, gw = (int(g) for g in grid)
    h, w = int(x.shape[2]), int(x.shape[3])
    if h % gh == 0 and w % gw == 0:
        pooled = F.avg_pool2d(x, kernel_size=(h // gh, w // gw)) if (gh, gw) != (1, 1) else x.mean(dim=(2, 3), keepdim=True)
        return pooled.flatten(1)
    cells = [x[:, :, (i * h) // gh: -((-(i + 1) * h) // gh), (j * w) // gw: -((-(j + 1) * w) // gw)].mean(dim=(2, 3))
             for i in range(gh) for j in range(gw)]
    return torch.stack(cells, dim=2).flatten(1)  # [B, C, gh*gw] -> channel-major like adaptive pooling


@torch.no_grad()
def tap_activations(backbone: Backbone, images: torch.Tensor, points: list[int]) -> dict[int, torch.Tensor]:
    """The base's own activations at `points` (the network.py numbering), one forward pass."""
    want, out = set(points), {}
    n = backbone.num_blocks
    h = backbone.stem(images)
    if 1 in want:
        out[1] = h
    for b, block in enumerate(backbone.blocks, start=1):
        h = block(h)
        if b + 1 in want:
            out[b + 1] = h
    if n + 2 in want:
        out[n + 2] = backbone.neck(h)
    return out


def tap_dims(backbone: Backbone, points: list[dict], input_size: tuple[int, int]) -> list[int]:
    """Pooled feature count of each tap (one dummy image through the base)."""
    acts = tap_activations(backbone, torch.zeros(1, 3, *input_size), [int(p["point"]) for p in points])
    return [int(grid_pool(acts[int(p["point"])], p.get("grid")).shape[1]) for p in points]


def pooled_taps(acts: dict[int, torch.Tensor], specs: list[dict], select: torch.Tensor | None) -> torch.Tensor:
    """Each tap of `specs` ({"point", "grid"}) pooled from the activations `acts` (by point),
    concatenated in order, and the `select`ed features kept (None: all)."""
    pooled = [grid_pool(acts[int(s["point"])], s.get("grid")) for s in specs]
    f = pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=1)
    return f if select is None else f.index_select(1, select)


class TapHead(nn.Module):
    """Pooled taps -> concatenation -> selected features -> linear head."""

    def __init__(self, task: TaskDelta):
        super().__init__()
        self.specs = [{"point": int(p["point"]), "grid": p.get("grid")} for p in task.taps["points"]]
        self.points = [s["point"] for s in self.specs]
        self.grids = [s["grid"] for s in self.specs]
        select = task.taps.get("select")
        self.selected = select is not None
        self.register_buffer("select", select.clone() if select is not None else torch.zeros(0, dtype=torch.int64))
        self.head = task_head(task)

    def forward(self, acts: dict[int, torch.Tensor]) -> torch.Tensor:
        return self.head(pooled_taps(acts, self.specs, self.select if self.selected else None))
