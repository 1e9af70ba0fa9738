"""A task as its own full model: the one implementation of "run the base up to the task's
blocks, the task's blocks, the rest of the base, the head".

    TaskNet       a task that tunes blocks first..last: the base's stem and blocks before `first`
                  (the prefix), the task's blocks, the base's blocks after them, the neck, the
                  head; siamese: the head reads [base features, task features] (paper §5.1)
    TapTaskNet    a tap task (Head2Toe, the linear probe): the base as it is, pooled taps on its
                  activations, the selected features, the head
    task_net      the model a task file describes (either of the two)
    run_base      the base between two points

Points are numbered along the base (as in training/network.py):

    0        the images (the stem runs first)
    k        the input of block k (1-based), so 1 is the stem's output
    N + 1    the output of the last block
    N + 2    the features the classifier sees (after the neck)

Every user of a task's own model builds it here: the compiler's eager reference (the model
verification compares the graph with), the benchmark's naive and split deployments, and
training's networks (which add trainable copies, BatchNorm freezing and cached activations).

The base is not a submodule by default: a training network's `train()`, `parameters()` and
`state_dict()` then cover only what it trains. `hold_base=True` registers the base modules
the model runs (and nothing else: not the classifier, not the blocks the task replaces), so
`.to()`, `.eval()`, weight counts and ONNX export see exactly the weights it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from subtune.delta.modules import pooled_taps, tap_activations, task_blocks, task_head

if TYPE_CHECKING:
    from subtune.delta.task import TaskDelta
    from subtune.models import Backbone


def features_point(backbone: Backbone) -> int:
    """The point of the features the classifier sees (after the neck)."""
    return backbone.num_blocks + 2


def run_base(backbone: Backbone, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Carry activations at point `start` to point `stop` through the base."""
    n = backbone.num_blocks
    if start == 0 and stop > 0:
        x, start = backbone.stem(x), 1
    for b in range(start, min(stop, n + 1)):
        x = backbone.blocks[b - 1](x)
    if stop == n + 2 and start <= n + 1:
        x = backbone.neck(x)
    return x


def _base_modules(backbone: Backbone, start: int, stop: int) -> list[nn.Module]:
    """The modules run_base(backbone, x, start, stop) runs, in order."""
    n = backbone.num_blocks
    mods: list[nn.Module] = []
    if start == 0 and stop > 0:
        mods.append(backbone.stem)
        start = 1
    mods += [backbone.blocks[b - 1] for b in range(start, min(stop, n + 1))]
    if stop == n + 2 and start <= n + 1:
        mods.append(backbone.neck)
    return mods


def _hold(net: nn.Module, modules: list[nn.Module]) -> None:
    """Register `modules` (each once) under `net.base`."""
    unique = list({id(m): m for m in modules}.values())
    net.base = nn.ModuleList(unique)


class TaskNet(nn.Module):
    """The base with the task's blocks `first .. first + len(tuned) - 1` swapped in and `head` on
    top; no tuned blocks: `head` on the base's features (cut at the features).

    `cut` is the point the task's own part starts at (`first`, or the features); everything before
    it is the shared, frozen prefix, so `forward_from(h)` runs the task from activations cached
    at the cut. `entry` is the point `forward` takes its input at: 0 (images) for a full model,
    an earlier point for a remainder fed a shared prefix's output."""

    def __init__(self, backbone: Backbone, first: int | None, tuned: nn.ModuleList, head: nn.Module, *,
                 siamese: bool = False, entry: int = 0, hold_base: bool = False):
        super().__init__()
        object.__setattr__(self, "backbone", backbone)  # not a submodule: see the module docstring
        self.first = first if len(tuned) else None
        self.siamese = siamese
        self.entry = entry
        self.tuned = tuned
        self.head = head
        if self.entry > self.cut:
            raise ValueError(f"entry point {entry} is after the task's cut {self.cut}")
        if hold_base:
            _hold(self, self._runs())

    @classmethod
    def from_task(cls, backbone: Backbone, task: TaskDelta, *, entry: int = 0, hold_base: bool = False) -> "TaskNet":
        """The task file's model (pruned blocks rebuilt at their pruned size), in eval mode."""
        return cls(backbone, task.first, task_blocks(task, backbone), task_head(task), siamese=task.siamese,
                   entry=entry, hold_base=hold_base).eval()

    @property
    def cut(self) -> int:
        return self.first if self.first is not None else features_point(self.backbone)

    def _runs(self) -> list[nn.Module]:
        bb, n = self.backbone, self.backbone.num_blocks
        mods = _base_modules(bb, self.entry, self.cut)
        if self.siamese:
            mods += _base_modules(bb, self.cut, n + 2)
        if self.first is not None:
            mods += [bb.blocks[b - 1] for b in range(self.first + len(self.tuned), n + 1)] + [bb.neck]
        return mods

    def rest(self, h: torch.Tensor) -> torch.Tensor:
        """Activations at the cut -> the task's features: its blocks, the base's blocks after
        them, the neck."""
        if self.first is None:
            return h
        bb = self.backbone
        for b in range(self.first, bb.num_blocks + 1):
            k = b - self.first
            h = self.tuned[k](h) if k < len(self.tuned) else bb.blocks[b - 1](h)
        return bb.neck(h)

    def forward_from(self, h: torch.Tensor, base_features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from activations at the cut; siamese: `base_features` are the base's features
        of the same images (computed from `h` when not given)."""
        if self.siamese and base_features is None:
            base_features = self.run_base(h, self.cut, features_point(self.backbone))
        f = self.rest(h)
        if self.siamese:
            f = torch.cat([base_features, f], dim=1)
        return self.head(f)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits from the input at `entry`: the images for a full model, else the activations at
        that point (named `images` all the same: the exported graph's one input)."""
        return self.forward_from(self.run_base(images, self.entry, self.cut))

    def run_base(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The base's own part (the prefix, the siamese base features): a training network runs
        it without autograd."""
        return run_base(self.backbone, x, start, stop)


class TapTaskNet(nn.Module):
    """A head on the base's pooled activations (Head2Toe; the linear probe with one tap at the
    features). The base runs as it is, so the model reads images (cut 0)."""

    cut = 0
    siamese = False

    def __init__(self, backbone: Backbone, specs: list[dict], select: torch.Tensor | None, head: nn.Linear, *,
                 hold_base: bool = False):
        super().__init__()
        object.__setattr__(self, "backbone", backbone)
        self.specs = [dict(s) for s in specs]
        self.register_buffer("select", select if select is not None else torch.zeros(0, dtype=torch.int64))
        self.selected = select is not None
        self.head = head
        if hold_base:  # what tap_activations runs: the stem, every block, the neck when tapped
            n = backbone.num_blocks
            _hold(self, [backbone.stem, *backbone.blocks, *([backbone.neck] if n + 2 in self.points else [])])

    @classmethod
    def from_task(cls, backbone: Backbone, task: TaskDelta, *, hold_base: bool = False) -> "TapTaskNet":
        select = task.taps.get("select")
        return cls(backbone, task.taps["points"], select.clone() if select is not None else None, task_head(task),
                   hold_base=hold_base).eval()

    @property
    def points(self) -> list[int]:
        return [int(s["point"]) for s in self.specs]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        acts = tap_activations(self.backbone, images, self.points)
        return pooled_taps(acts, self.specs, self.select if self.selected else None)

    def forward_from(self, images: torch.Tensor, base_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(images))

    forward = forward_from


def task_net(backbone: Backbone, task: TaskDelta, *, hold_base: bool = False) -> TaskNet | TapTaskNet:
    """The model a task file describes, in eval mode: a TapTaskNet for a tap task, else a TaskNet."""
    if task.taps is not None:
        return TapTaskNet.from_task(backbone, task, hold_base=hold_base)
    return TaskNet.from_task(backbone, task, hold_base=hold_base)
