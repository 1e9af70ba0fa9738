"""The PyTorch eager reference: each task run on its own, as one full model per task
(subtune.delta.standalone, the one implementation of a task's own model).

Deliberately independent of the schedule and the lowered module, so verification checks the
fork/merge/split logic and the export together.
"""

from __future__ import annotations

import torch

from subtune.delta.standalone import task_net
from subtune.delta import TaskDelta
from subtune.models import Backbone


@torch.no_grad()
def reference_outputs(base_model: torch.nn.Module, backbone: Backbone, tasks: list[TaskDelta],
                      images: torch.Tensor) -> list[torch.Tensor]:
    """[base model output, task 0 output, ...] computed model by model in eager mode."""
    outs = [base_model(images)]
    for task in tasks:
        outs.append(task_net(backbone, task, hold_base=True)(images))
    return outs
