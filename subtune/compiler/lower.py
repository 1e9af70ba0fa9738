"""Lowering: turn a schedule into one PyTorch module whose forward is the multi-task graph.

The module holds the base model once and one small module per task (its tuned blocks and its
head). Fork, merge and split are submodules with readable names; the exported ONNX nodes keep
those names in their scope, which the clean-up pass uses to name them.

Stream roles: `stream_roles()` says which stream each part computes (the base network, a task,
a fork, a merge, the split: subtune/passes/record_stream_roles.py), by module path. The forward
does no tensor arithmetic of its own, only calls to those parts and the base network's, so every
exported node lies inside one of them; RecordStreamRolesPass stores the role in each node, and
INT8 base pinning reads it there (subtune/quantization/base_stream.py).

Tap tasks (Head2Toe, the linear probe; delta.TaskDelta) do not fork: their branch reads the
base chunk of the shared stream right after the shared block that produces each tapped point
(the features for point N + 2), pools, concatenates, gathers the selected features and
applies the head. The shared stream itself is left as it was, so the base output is untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from subtune.compiler.fold import BlockFolder, folded_task_blocks
from subtune.compiler.schedule import Fork, Merge, RunBlock, Schedule
from subtune.delta.modules import TapHead, task_blocks, task_head
from subtune.delta import TaskDelta
from subtune.formats import release_task_memory
from subtune.models import Backbone
from subtune.passes.record_stream_roles import BASE, MERGE, SPLIT, TAP, fork_role, task_role


class TaskBranch(nn.Module):
    tap = False

    def __init__(self, task: TaskDelta, backbone: Backbone, blocks: nn.ModuleList | None = None):
        """`blocks`: the task's blocks already built (folded: fold.py); None builds them as they are."""
        super().__init__()
        self.first = task.first
        self.siamese = task.siamese
        self.blocks = task_blocks(task, backbone) if blocks is None else blocks
        self.head = task_head(task)

    def block(self, number: int) -> nn.Module:
        return self.blocks[number - self.first]

    def forward(self, base_features: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The task's logits from its chunk of the final features (Siamese: beside the base's)."""
        return self.head(torch.cat([base_features, features], dim=1) if self.siamese else features)


def _branch(task: TaskDelta, backbone: Backbone, folders: dict[int, BlockFolder] | None) -> nn.Module:
    """A task's part of the module, holding copies of its weights (folded where `folders` is
    given); a task mapped from its file gives back the memory reading it took, once per task, so
    lowering 100 tasks never holds them all twice (formats.release_task_memory)."""
    if task.taps is not None:
        branch = TapBranch(task)
    else:
        branch = TaskBranch(task, backbone, None if folders is None else folded_task_blocks(task, backbone, folders))
    release_task_memory(task)
    return branch


class TapBranch(nn.Module):
    """A tap task's part of the graph: no blocks, a head on the base's activations."""

    tap = True
    siamese = False

    def __init__(self, task: TaskDelta):
        super().__init__()
        self.taps = TapHead(task)

    def forward(self, taps: dict[int, torch.Tensor]) -> torch.Tensor:
        return self.taps(taps)


class ForkStream(nn.Module):
    """Take the base chunk (chunk 0 of `chunks`) of the shared stream."""

    def __init__(self, chunks: int):
        super().__init__()
        self.chunks = chunks

    def forward(self, shared: torch.Tensor) -> torch.Tensor:
        if self.chunks == 1:
            return shared
        # Reshape to [chunks, batch, ...] and pick 0: no batch size is baked into the graph.
        return shared.view((self.chunks, -1) + tuple(shared.shape[1:]))[0]


class BaseChunk(ForkStream):
    """The base's chunk of the shared stream, for taps: the same view as a fork's, under a name of
    its own so the exported nodes say which they are."""


class MergeStreams(nn.Module):
    """Concatenate streams on the batch axis."""

    def forward(self, *streams: torch.Tensor) -> torch.Tensor:
        return torch.cat(streams, dim=0)


class SplitStreams(nn.Module):
    """Split the final features into equal per-stream chunks."""

    def __init__(self, chunks: int):
        super().__init__()
        self.chunks = chunks

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.chunks == 1:
            return (features,)
        return features.unflatten(0, (self.chunks, -1)).unbind(0)


class MultiTaskModel(nn.Module):
    """images -> (base logits, task 0 logits, task 1 logits, ...)."""

    def __init__(self, base_model: nn.Module, backbone: Backbone, tasks: list[TaskDelta], schedule: Schedule, *,
                 fold_batch_norm: bool = False):
        """`fold_batch_norm`: fold the task blocks' BatchNorms into their convolutions (fold.py),
        as the ONNX export does anyway, so the module holds each task's weights once."""
        super().__init__()
        self.base = base_model
        self.backbone = backbone  # a plain dataclass of views into self.base, not a submodule
        folders: dict[int, BlockFolder] | None = {} if fold_batch_norm else None
        self.tasks = nn.ModuleList(_branch(t, backbone, folders) for t in tasks)
        self.schedule = schedule
        # Tapped points of the shared stream, and how many chunks it holds when each is produced.
        self.tap_points = sorted({p for t in tasks for p in t.tap_points})
        self.tap_chunks: dict[int, int] = {}
        self.forks = nn.ModuleDict()
        self.merges = nn.ModuleDict()
        chunks = 1
        for step in schedule.steps:
            if isinstance(step, Fork):
                self.forks[f"fork_{tasks[step.task].name}_before_block{step.block}"] = ForkStream(chunks)
            elif isinstance(step, Merge):
                self.merges[f"merge_after_block{step.after_block}"] = MergeStreams()
                chunks += len(step.tasks)
            elif step.task is None:
                self.tap_chunks[step.block + 1] = chunks  # the point after this shared block
        self.tap_chunks[1] = 1
        self.base_chunks = nn.ModuleDict({f"tap_point{p}": BaseChunk(self.tap_chunks[p]) for p in self.tap_points
                                          if p <= backbone.num_blocks + 1})
        self.final_merge = MergeStreams()
        self.split_heads = SplitStreams(len(schedule.final_chunks))
        self._fork_names = list(self.forks)
        self._merge_names = list(self.merges)
        self.base_chunks_points = {p for p in self.tap_points if p <= backbone.num_blocks + 1}
        self._roles = {"base": BASE, **{f"tasks.{i}": task_role(t.name) for i, t in enumerate(tasks)}}
        for step, name in zip((s for s in schedule.steps if isinstance(s, Fork)), self._fork_names):
            self._roles[f"forks.{name}"] = fork_role(tasks[step.task].name)
        self._roles.update({f"merges.{name}": MERGE for name in self._merge_names})
        merged = {t for s in schedule.steps if isinstance(s, Merge) for t in s.tasks}
        if any(t is not None and t not in merged for t in schedule.final_chunks):
            self._roles["final_merge"] = MERGE  # tasks that end at the last block join before the neck
        if len(schedule.final_chunks) > 1:
            self._roles["split_heads"] = SPLIT
        self._roles.update({f"base_chunks.{name}": TAP for name in self.base_chunks})

    def stream_roles(self) -> dict[str, str]:
        """Module path of each stream part that runs -> its role (record_stream_roles.py)."""
        return dict(self._roles)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bb = self.backbone
        shared = bb.stem(images)
        taps: dict[int, torch.Tensor] = {}
        if 1 in self.base_chunks_points:
            taps[1] = shared
        streams: dict[int, torch.Tensor] = {}
        forks, merges = iter(self._fork_names), iter(self._merge_names)
        for step in self.schedule.steps:
            if isinstance(step, Fork):
                streams[step.task] = self.forks[next(forks)](shared)
            elif isinstance(step, RunBlock):
                if step.task is None:
                    shared = bb.blocks[step.block - 1](shared)
                    if step.block + 1 in self.base_chunks_points:
                        taps[step.block + 1] = self.base_chunks[f"tap_point{step.block + 1}"](shared)
                else:
                    streams[step.task] = self.tasks[step.task].block(step.block)(streams[step.task])
            else:
                shared = self.merges[next(merges)](shared, *(streams.pop(t) for t in step.tasks))
        ending = [streams.pop(t) for t in self.schedule.final_chunks if t is not None and t in streams]
        if ending:
            shared = self.final_merge(shared, *ending)
        features = self.split_heads(bb.neck(shared))
        by_stream = dict(zip(self.schedule.final_chunks, features))
        base_features = by_stream[None]
        taps[bb.num_blocks + 2] = base_features
        outputs = [bb.classifier(base_features)]
        for t, branch in enumerate(self.tasks):
            outputs.append(branch(taps) if branch.tap else branch(base_features, by_stream[t]))
        return tuple(outputs)
