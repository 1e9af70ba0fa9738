"""Lowering: turn a schedule into one PyTorch module whose forward is the multi-task graph.

The module holds the base model once and one small module per task (its tuned blocks and its
head). Fork, merge and split are submodules with readable names; the exported ONNX nodes keep
those names in their scope, which the clean-up pass uses to name them.

Stream roles: `stream_roles()` says which stream each part computes (the base network, a task,
a fork, a merge, the split: subtune/passes/record_stream_roles.py), by module path. The forward
does no tensor arithmetic of its own, only calls to those parts and the base network's (its stem
and neck run inside parts of their own, `stem` and `neck`, as some are functions of the model
rather than its submodules), so every exported node lies inside one of them;
RecordStreamRolesPass stores the role in each node (and fails naming a node outside every part),
and INT8 base pinning reads it there (subtune/quantization/base_stream.py).

Tap tasks (Head2Toe, the linear probe; delta.TaskDelta) do not fork: their branch reads the
base chunk of the shared stream right after the shared block that produces each tapped point
(the features for point N + 2), pools, concatenates, gathers the selected features and
applies the head. The shared stream itself is left as it was, so the base output is untouched.

Task selection (`TaskSelectModel`, `subtune-compile --task-select`): each image computes the base
plus only the tasks it asked for. The module takes one more input per task, the indices of the
images (rows of the batch) that asked for it (1-d int64, its own dynamic size, possibly 0); the
ONNX pass TaskRowsFromMaskPass (subtune/passes/task_rows_from_mask.py) later computes them from
one graph input `tasks` ([batch, k] bool). The schedule is the same; what changes:
  1. Fork: a task's stream starts as the rows it asked for, a Gather of the shared stream (whose
     first `batch` rows are the base's, so the indices pick base rows) instead of a view of the
     whole base chunk. Merge is unchanged: later shared blocks run on the base rows plus only the
     selected rows.
  2. Split: the final features are sliced into [batch, n_0, n_1, ...] rows, in final-chunk order
     (Slices whose ends are computed at run time, not a Split: TensorRT needs a Split's sizes
     constant).
  3. Tap tasks take their rows of each tapped activation, and a Siamese head its rows of the
     base features, by the same Gather.
  4. Each task's output is full batch: FILL (NaN) everywhere, its logits scattered into its rows.
The base's rows are computed exactly as without selection, so the base output does not depend
on the mask.
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
from subtune.passes.record_stream_roles import BASE, MERGE, SPLIT, TAP, fill_role, fork_role, rows_role, task_role

FILL = float("nan")  # a task's output in the rows that did not ask for it (task selection)


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


class BackbonePart(nn.Module):
    """One of the backbone's own parts (its stem or neck) run under a module path of the lowering's,
    so the nodes it exports carry a scope (the evidence of their role) even where the part is a
    function of the model (ViT's stem) rather than its submodule. Holds no weights: the part's
    are the base's, registered under `base`."""

    def __init__(self, part: nn.Module):
        super().__init__()
        object.__setattr__(self, "part", part)  # not registered: no second path to the base's weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.part(x)


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


class SelectRows(nn.Module):
    """Task selection: the rows `rows` of a tensor whose first `batch` rows are the base's (a Gather
    on the batch axis): a fork, or a Siamese head's base features."""

    def forward(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return x.index_select(0, rows)


class SelectTapRows(nn.Module):
    """Task selection: a tap task's rows of each activation it taps."""

    def __init__(self, points: list[int]):
        super().__init__()
        self.points = list(points)

    def forward(self, taps: dict[int, torch.Tensor], rows: torch.Tensor) -> dict[int, torch.Tensor]:
        return {p: taps[p].index_select(0, rows) for p in self.points}


class SplitRows(nn.Module):
    """Task selection: slice the final features into the base's `batch` rows, then each task
    stream's rows, in final-chunk order (`rows`: the streams' row indices, for their counts)."""

    def forward(self, features: torch.Tensor, batch: int, *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not rows:
            return (features,)
        chunks, start = [features[:batch]], batch
        for r in rows[:-1]:
            end = start + r.shape[0]
            chunks.append(features[start:end])
            start = end
        chunks.append(features[start:])
        return tuple(chunks)


class FillRows(nn.Module):
    """Task selection: a task's output at full batch, FILL where the row did not ask for the task."""

    def forward(self, logits: torch.Tensor, batch: int, rows: torch.Tensor) -> torch.Tensor:
        return logits.new_full((batch, logits.shape[1]), FILL).index_copy(0, rows, logits)


class LoweredGraph(nn.Module):
    """What both lowered modules hold: the base, its stem and neck, one branch per task, the
    schedule, and the roles of their parts (stream_roles)."""

    def __init__(self, base_model: nn.Module, backbone: Backbone, tasks: list[TaskDelta], schedule: Schedule, *,
                 fold_batch_norm: bool = False):
        """`fold_batch_norm`: fold the task blocks' BatchNorms into their convolutions (fold.py),
        as the ONNX export does anyway, so the module holds each task's weights once."""
        super().__init__()
        self.base = base_model
        self.backbone = backbone  # a plain dataclass of views into self.base, not a submodule
        self.stem, self.neck = BackbonePart(backbone.stem), BackbonePart(backbone.neck)
        folders: dict[int, BlockFolder] | None = {} if fold_batch_norm else None
        self.tasks = nn.ModuleList(_branch(t, backbone, folders) for t in tasks)
        self.schedule = schedule
        self._roles = {"base": BASE, "stem": BASE, "neck": BASE,
                       **{f"tasks.{i}": task_role(t.name) for i, t in enumerate(tasks)}}

    def _merge_and_split_roles(self, merge_names, schedule: Schedule) -> None:
        self._roles.update({f"merges.{name}": MERGE for name in merge_names})
        merged = {t for s in schedule.steps if isinstance(s, Merge) for t in s.tasks}
        if any(t is not None and t not in merged for t in schedule.final_chunks):
            self._roles["final_merge"] = MERGE  # tasks that end at the last block join before the neck
        if len(schedule.final_chunks) > 1:
            self._roles["split_heads"] = SPLIT

    def stream_roles(self) -> dict[str, str]:
        """Module path of each stream part that runs -> its role (record_stream_roles.py)."""
        return dict(self._roles)


class MultiTaskModel(LoweredGraph):
    """images -> (base logits, task 0 logits, task 1 logits, ...)."""

    def __init__(self, base_model: nn.Module, backbone: Backbone, tasks: list[TaskDelta], schedule: Schedule, *,
                 fold_batch_norm: bool = False):
        super().__init__(base_model, backbone, tasks, schedule, fold_batch_norm=fold_batch_norm)
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
        for step, name in zip((s for s in schedule.steps if isinstance(s, Fork)), self._fork_names):
            self._roles[f"forks.{name}"] = fork_role(tasks[step.task].name)
        self._merge_and_split_roles(self._merge_names, schedule)
        self._roles.update({f"base_chunks.{name}": TAP for name in self.base_chunks})

    def input_roles(self) -> dict[str, str]:
        """Graph input -> the role of the sizes the exporter reads from it (record_stream_roles.py, rule 2)."""
        return {"images": BASE}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bb = self.backbone
        shared = self.stem(images)
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
        features = self.split_heads(self.neck(shared))
        by_stream = dict(zip(self.schedule.final_chunks, features))
        base_features = by_stream[None]
        taps[bb.num_blocks + 2] = base_features
        outputs = [bb.classifier(base_features)]
        for t, branch in enumerate(self.tasks):
            outputs.append(branch(taps) if branch.tap else branch(base_features, by_stream[t]))
        return tuple(outputs)


class TaskSelectModel(LoweredGraph):
    """(images, rows of task 0, rows of task 1, ...) -> (base logits, task 0 logits, ...): each task
    runs on the rows that asked for it (the module docstring's task selection)."""

    def __init__(self, base_model: nn.Module, backbone: Backbone, tasks: list[TaskDelta], schedule: Schedule, *,
                 fold_batch_norm: bool = False):
        super().__init__(base_model, backbone, tasks, schedule, fold_batch_norm=fold_batch_norm)
        self.names = [t.name for t in tasks]
        self.tap_points = {p for t in tasks for p in t.tap_points if p <= backbone.num_blocks + 1}
        self.forks = nn.ModuleDict({f"fork_{tasks[s.task].name}_before_block{s.block}": SelectRows()
                                    for s in schedule.steps if isinstance(s, Fork)})
        self.selects = nn.ModuleDict()
        select_roles = {}
        for t in tasks:
            if t.taps is not None or t.siamese:
                key = f"{t.name}_taps" if t.taps is not None else f"{t.name}_base_features"
                self.selects[key] = SelectTapRows(t.tap_points) if t.taps is not None else SelectRows()
                select_roles[f"selects.{key}"] = fork_role(t.name)
        self.merges = nn.ModuleDict({f"merge_after_block{s.after_block}": MergeStreams()
                                     for s in schedule.steps if isinstance(s, Merge)})
        self.final_merge = MergeStreams()
        self.split_heads = SplitRows()
        self.fills = nn.ModuleDict({t.name: FillRows() for t in tasks})
        for step in (s for s in schedule.steps if isinstance(s, Fork)):
            name = tasks[step.task].name
            self._roles[f"forks.fork_{name}_before_block{step.block}"] = fork_role(name)
        self._roles.update(select_roles)
        self._merge_and_split_roles(self.merges, schedule)
        self._roles.update({f"fills.{t.name}": fill_role(t.name) for t in tasks})

    @property
    def index_inputs(self) -> list[str]:
        """The module's inputs after `images`, one per task in output order: the rows that asked for it."""
        return [f"rows_{i}" for i in range(len(self.names))]

    def input_roles(self) -> dict[str, str]:
        """Graph input -> the role of the sizes the exporter reads from it (record_stream_roles.py, rule 2)."""
        return {"images": BASE, **{i: rows_role(n) for i, n in zip(self.index_inputs, self.names)}}

    def forward(self, images: torch.Tensor, *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bb = self.backbone
        batch = images.shape[0]
        shared = self.stem(images)
        taps: dict[int, torch.Tensor] = {1: shared} if 1 in self.tap_points else {}
        streams: dict[int, torch.Tensor] = {}
        forks, merges = iter(self.forks.values()), iter(self.merges.values())
        for step in self.schedule.steps:
            if isinstance(step, Fork):  # rule 1: the rows that asked for the task, of the base's rows
                streams[step.task] = next(forks)(shared, rows[step.task])
            elif isinstance(step, RunBlock):
                if step.task is None:
                    shared = bb.blocks[step.block - 1](shared)
                    if step.block + 1 in self.tap_points:
                        taps[step.block + 1] = shared  # the base's rows come first: a tap task selects from them
                else:
                    streams[step.task] = self.tasks[step.task].block(step.block)(streams[step.task])
            else:
                shared = next(merges)(shared, *(streams.pop(t) for t in step.tasks))
        ending = [streams.pop(t) for t in self.schedule.final_chunks if t is not None and t in streams]
        if ending:
            shared = self.final_merge(shared, *ending)
        chunk_rows = [rows[t] for t in self.schedule.final_chunks if t is not None]
        features = self.split_heads(self.neck(shared), batch, *chunk_rows)  # rule 2
        by_stream = dict(zip(self.schedule.final_chunks, features))
        base_features = by_stream[None]
        taps[bb.num_blocks + 2] = base_features
        outputs = [bb.classifier(base_features)]
        for t, (name, branch) in enumerate(zip(self.names, self.tasks)):
            if branch.tap:  # rule 3
                logits = branch(self.selects[f"{name}_taps"](taps, rows[t]))
            elif branch.siamese:
                logits = branch(self.selects[f"{name}_base_features"](base_features, rows[t]), by_stream[t])
            else:
                logits = branch(base_features, by_stream[t])
            outputs.append(self.fills[name](logits, batch, rows[t]))  # rule 4
        return tuple(outputs)
