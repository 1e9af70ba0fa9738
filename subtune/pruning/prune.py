"""Prune a task's tuned blocks: analyse -> plan -> apply -> a self-describing pruned task.

    analyse  Torch-Pruning's dependency graph per tuned block: the channel groups inside it and
             their L1/L2 importance (analysis.py)
    plan     how many of each group to keep: local or global scope, round_to (plan.py)
    apply    remove the other channels and heads from private copies of the blocks
    describe the pruned task file: smaller block states + meta["pruned"] (rebuild.py), and a
             report of parameters, FLOPs and channels before and after
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from subtune.delta.modules import task_blocks
from subtune.errors import SubtuneError
from subtune.delta import TaskDelta, validate_task
from subtune.models import Backbone, BaseModel
from subtune.pruning import measure
from subtune.pruning.analysis import HEADS, PrunableBlock
from subtune.pruning.plan import PruneOptions, plan_pruning
from subtune.delta.pruned import PRUNED_FORMAT, pruned_blocks


@dataclass
class PruneResult:
    task: TaskDelta  # the pruned task, validated against its base
    report: dict[str, Any]  # parameters, FLOPs and channels per block, before and after
    modules: list[torch.nn.Module]  # the pruned blocks as Torch-Pruning left them (the file rebuilds to these)


def prune_task(task: TaskDelta, base: BaseModel, options: PruneOptions, *, backbone: Backbone | None = None,
               input_size: tuple[int, int] | None = None) -> PruneResult:
    """Prune the channels inside `task`'s tuned blocks; its head and block range stay as they are.
    FLOPs are counted at `input_size` (default: the size the task was trained at, else the base's)."""
    options.check()
    if pruned_blocks(task.meta):
        ratio = task.meta["pruned"].get("report", {}).get("options", {}).get("ratio")
        raise SubtuneError(f"{task.path or task.name}: task {task.name!r} is already pruned (ratio {ratio}); "
                           "prune the unpruned task instead")
    if backbone is None:
        _, backbone = base.build()
    shapes = block_input_shapes(backbone, task.blocks, input_size or _trained_size(task) or base.input_size)
    blocks = [PrunableBlock(b, block, shapes[b], options.p)
              for b, block in zip(task.blocks, task_blocks(task, backbone))]
    keep = plan_pruning([g for pb in blocks for g in pb.groups], options)  # raises before anything is pruned
    before = {pb.number: _measure(pb) for pb in blocks}
    for pb in blocks:
        pb.apply({(kind, layer): idx for (b, kind, layer), idx in keep.items() if b == pb.number})
    report = _report(blocks, before, keep, options)
    state = {str(pb.number): {k: v.detach().clone().contiguous() for k, v in pb.module.state_dict().items()}
             for pb in blocks}
    meta = {**task.meta, "pruned": {"format": PRUNED_FORMAT, "blocks": {str(pb.number): pb.spec() for pb in blocks},
                                    "report": report}}
    pruned = replace(task, block_state=state, meta=meta, path=None)
    validate_task(pruned, base, backbone)  # the file alone must rebuild to these blocks
    return PruneResult(pruned, report, [pb.module.eval() for pb in blocks])


def _trained_size(task: TaskDelta) -> tuple[int, int] | None:
    size = (task.meta.get("preprocess") or {}).get("image_size")
    return (int(size[0]), int(size[-1])) if size else None


@torch.no_grad()
def block_input_shapes(backbone: Backbone, blocks: list[int],
                       input_size: tuple[int, int]) -> dict[int, tuple[int, ...]]:
    """Each listed block's input shape (without batch) for images of `input_size`."""
    h = backbone.stem(torch.zeros(1, 3, *input_size))
    shapes = {}
    for number, block in enumerate(backbone.blocks[:max(blocks)], start=1):
        shapes[number] = tuple(h.shape[1:])
        h = block(h)
    return {b: shapes[b] for b in blocks}


def _measure(pb: PrunableBlock) -> dict[str, int]:
    return {"params": measure.parameters(pb.module), "flops": measure.flops(pb.module, pb.input_shape)}


def _report(blocks: list[PrunableBlock], before: dict[int, dict], keep: dict, options: PruneOptions) -> dict[str, Any]:
    per_block = {}
    for pb in blocks:
        after, b = _measure(pb), before[pb.number]
        kept = {(f"{g.layer} (heads)" if g.kind == HEADS else g.layer):
                [g.size, len(keep.get((pb.number, g.kind, g.layer), range(g.size)))] for g in pb.groups}
        per_block[str(pb.number)] = {"params": [b["params"], after["params"]], "flops": [b["flops"], after["flops"]],
                                     "kept": kept}
    params = [sum(v["params"][i] for v in per_block.values()) for i in (0, 1)]
    flops = [sum(v["flops"][i] for v in per_block.values()) for i in (0, 1)]
    return {"options": options.to_json(), "params": params, "flops": flops,
            "params_kept": params[1] / max(params[0], 1), "flops_kept": flops[1] / max(flops[0], 1),
            "blocks": per_block}
