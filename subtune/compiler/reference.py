"""The PyTorch eager reference: each task run on its own, as one full model per task.

Deliberately independent of the schedule and the lowered module, so verification checks the
fork/merge/split logic and the export together.
"""

from __future__ import annotations

import torch

from subtune.delta.modules import TapHead, tap_activations, task_blocks, task_head
from subtune.formats import TaskDelta
from subtune.models import Backbone


class TaskModel(torch.nn.Module):
    """The base with one task's blocks and head swapped in: what full deployment of that task
    alone would run."""

    def __init__(self, backbone: Backbone, task: TaskDelta):
        super().__init__()
        self.base = backbone.model  # registered, so export and .to() see the shared weights
        self.backbone = backbone  # a plain dataclass of views into self.base
        self.tuned = task_blocks(task, backbone)
        self.head = task_head(task)
        self.first, self.siamese = task.first, task.siamese

    def features(self, images: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        h = bb.stem(images)
        for i, block in enumerate(bb.blocks, start=1):
            k = i - self.first
            h = self.tuned[k](h) if 0 <= k < len(self.tuned) else block(h)
        return bb.neck(h)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self.features(images)
        if self.siamese:
            f = torch.cat([self.backbone.neck(_run_base(self.backbone, images)), f], dim=1)
        return self.head(f)


class TapModel(torch.nn.Module):
    """A tap task alone: the base runs as it is, the head reads its activations."""

    def __init__(self, backbone: Backbone, task: TaskDelta):
        super().__init__()
        self.base = backbone.model
        self.backbone = backbone
        self.taps = TapHead(task)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.taps(tap_activations(self.backbone, images, self.taps.points))


def task_model(backbone: Backbone, task: TaskDelta) -> torch.nn.Module:
    """The reference for one task: its own full model (delta) or the base with its taps."""
    return (TapModel if task.taps is not None else TaskModel)(backbone, task).eval()


def _run_base(bb: Backbone, images: torch.Tensor) -> torch.Tensor:
    h = bb.stem(images)
    for block in bb.blocks:
        h = block(h)
    return h


@torch.no_grad()
def reference_outputs(base_model: torch.nn.Module, backbone: Backbone, tasks: list[TaskDelta],
                      images: torch.Tensor) -> list[torch.Tensor]:
    """[base model output, task 0 output, ...] computed model by model in eager mode."""
    outs = [base_model(images)]
    for task in tasks:
        outs.append(task_model(backbone, task)(images))
    return outs
