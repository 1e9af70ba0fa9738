"""The PyTorch eager reference: each task run as its own full model (subtune.delta.standalone,
the one implementation of a task's own model).

Deliberately independent of the schedule and the lowered module, so verification checks the
fork/merge/split logic and the export together.

A task's own model is the base's frozen prefix (the stem and the blocks before its first tuned
block), its blocks, the base's blocks after them, the neck and its head. The prefix is the base's
own computation whatever the task, so it runs once for every task that starts at the same block
and each task's model continues from there (TaskNet.forward_from): the same operations on the
same inputs as running each model from the images, at a quarter of the cost for tasks on the last
blocks of a ResNet-50. Tasks are built and run one at a time, and a task mapped from its file
gives back the memory reading it took once it has run (formats.release_task_memory).
"""

from __future__ import annotations

import torch

from subtune.delta import TaskDelta
from subtune.delta.modules import tap_activations
from subtune.delta.standalone import TaskNet, features_point, task_net
from subtune.formats import release_task_memory
from subtune.models import Backbone


@torch.no_grad()
def reference_outputs(base_model: torch.nn.Module, backbone: Backbone, tasks: list[TaskDelta],
                      images: torch.Tensor) -> list[torch.Tensor]:
    """[base model output, task 0 output, ...] computed model by model in eager mode."""
    outs = [base_model(images)]
    starts = {task.first for task in tasks if task.taps is None}
    if any(task.siamese for task in tasks):
        starts.add(features_point(backbone))  # the base's features beside a Siamese task's
    prefix = tap_activations(backbone, images, sorted(starts)) if starts else {}
    for task in tasks:
        net = task_net(backbone, task)
        if isinstance(net, TaskNet):
            base_features = prefix[features_point(backbone)] if task.siamese else None
            outs.append(net.forward_from(prefix[net.cut], base_features))
        else:  # a tap task's model reads the base's activations from the images itself
            outs.append(net(images))
        del net
        release_task_memory(task)
    return outs
