"""Whether a task fits its base, checked before any work (validate_task): fingerprint, block range,
block state shapes, head shape; tap tasks' points, pooled sizes and selection; pruned blocks
rebuilt and run."""

from __future__ import annotations

import torch
from torch import nn

from subtune.delta.modules import tap_dims
from subtune.delta.pruned import check_pruned_block, pruned_blocks
from subtune.delta.task import RESERVED_NAMES, TASK_NAME, TaskDelta
from subtune.errors import SubtuneError
from subtune.models import Backbone, BaseModel, build_model, diff_keys


def validate_task(task: TaskDelta, base: BaseModel, backbone: Backbone | None = None, *,
                  input_size: tuple[int, int] | None = None) -> None:
    """Check a task against its base before any work: fingerprint, block range, block state
    shapes, head shape (tap tasks: their points, pooled sizes and selection). Raises
    SubtuneError naming the file and the problem."""
    where = task.path or task.name
    if not TASK_NAME.match(task.name) or task.name in RESERVED_NAMES:
        raise SubtuneError(f"{where}: task name {task.name!r} is not usable as an output name: expected letters, "
                           "digits, '_' or '-' (starting with a letter or '_', not 'base'/'images'); rename the task")
    if task.base_fingerprint != base.fingerprint:
        raise SubtuneError(f"{where}: task {task.name!r} was trained on another base (fingerprint "
                           f"{task.base_fingerprint[:12]}…, this base is {base.fingerprint[:12]}…); "
                           "compile it with the base it was trained from")
    if task.arch != base.arch:
        raise SubtuneError(f"{where}: task is for {task.arch}, base is {base.arch}")
    if backbone is None:
        _, backbone = build_model(base.arch, base.arch_kwargs)
    if task.taps is not None:
        _validate_taps(task, base, backbone, where, input_size)
        return
    n = backbone.num_blocks
    b = task.blocks
    if not b or any(x < 1 or x > n for x in b):
        raise SubtuneError(f"{where}: blocks {b} out of range: {base.arch} has blocks 1..{n}")
    if b != list(range(b[0], b[0] + len(b))):
        raise SubtuneError(f"{where}: blocks {b} are not consecutive and ascending: expected e.g. [{b[0]}, {b[0] + 1}]")
    if sorted(task.block_state, key=int) != [str(x) for x in b]:
        raise SubtuneError(f"{where}: block_state has blocks {sorted(task.block_state)}, expected {[str(x) for x in b]}")
    pruned = _pruned_blocks(task, where)
    for blk in b:
        expected = backbone.blocks[blk - 1].state_dict()
        found = task.block_state[str(blk)]
        missing, unexpected = diff_keys(expected, found)
        if missing or unexpected:
            raise SubtuneError(f"{where}: block {blk} state does not fit the block (missing {missing[:3]}, "
                                   f"unexpected {unexpected[:3]}); was the task trained on {base.arch}?")
        if str(blk) in pruned:  # smaller shapes, checked by rebuilding and running the block
            _check_pruned_block(where, blk, backbone.blocks[blk - 1], found, pruned[str(blk)])
            continue
        for k, v in found.items():
            if k in expected and tuple(v.shape) != tuple(expected[k].shape):
                raise SubtuneError(f"{where}: block {blk} tensor {k!r} has shape {tuple(v.shape)}, the block expects "
                                   f"{tuple(expected[k].shape)}")
    w, bias = task.head.get("weight"), task.head.get("bias")
    in_dim = backbone.feature_dim * (2 if task.siamese else 1)
    if w is None or bias is None or w.ndim != 2 or bias.ndim != 1 or w.shape[0] != bias.shape[0]:
        raise SubtuneError(f"{where}: head must be {{'weight': [classes, {in_dim}], 'bias': [classes]}}")
    if w.shape[1] != in_dim:
        what = "[base features, task features]" if task.siamese else "the features"
        raise SubtuneError(f"{where}: head takes {w.shape[1]} inputs, but {what} have {in_dim} "
                           f"({'siamese' if task.siamese else 'plain'} head on {base.arch})")
    if task.classes is not None and len(task.classes) != w.shape[0]:
        raise SubtuneError(f"{where}: {len(task.classes)} class names for a head with {w.shape[0]} outputs")


def _validate_taps(task: TaskDelta, base: BaseModel, backbone: Backbone, where: str,
                   input_size: tuple[int, int] | None) -> None:
    n = backbone.num_blocks
    if task.blocks or task.block_state or task.siamese:
        raise SubtuneError(f"{where}: a tap task tunes no blocks and has no siamese head (found blocks {task.blocks}, "
                           f"siamese {task.siamese}); rewrite it with `subtune train`")
    points = task.taps["points"]
    if not points:
        raise SubtuneError(f"{where}: a tap task needs at least one tap point")
    nums = [p["point"] for p in points]
    if any(p < 1 or p > n + 2 for p in nums) or nums != sorted(set(nums)):
        raise SubtuneError(f"{where}: tap points {nums} must be ascending, distinct and within 1..{n + 2} "
                           f"({base.arch}: 1 is the stem's output, {n + 1} the last block's, {n + 2} the features)")
    if "pruned" in task.meta:
        raise SubtuneError(f"{where}: a tap task has no blocks to prune, but meta['pruned'] is set")

    size = input_size or _trained_size(task) or base.input_size
    found = tap_dims(backbone, points, size)
    for p, d in zip(points, found):
        if p["dim"] != d:
            raise SubtuneError(f"{where}: tap at point {p['point']} (grid {p['grid']}) gives {d} features on {base.arch} "
                               f"at {size[0]}x{size[1]}, the task expects {p['dim']}; was it trained on this base?")
    total = sum(found)
    select = task.taps["select"]
    if select is not None:
        if select.ndim != 1 or select.dtype not in (torch.int64, torch.int32) or not len(select):
            raise SubtuneError(f"{where}: taps['select'] must be a non-empty 1-d integer tensor")
        if int(select.min()) < 0 or int(select.max()) >= total or not bool((select[1:] > select[:-1]).all()):
            raise SubtuneError(f"{where}: taps['select'] must be ascending distinct indices in 0..{total - 1}")
    in_dim = total if select is None else len(select)
    w, bias = task.head.get("weight"), task.head.get("bias")
    if w is None or bias is None or w.ndim != 2 or bias.ndim != 1 or w.shape[0] != bias.shape[0] or w.shape[1] != in_dim:
        raise SubtuneError(f"{where}: head must be {{'weight': [classes, {in_dim}], 'bias': [classes]}} for its "
                           f"{in_dim} selected features")
    if task.classes is not None and len(task.classes) != w.shape[0]:
        raise SubtuneError(f"{where}: {len(task.classes)} class names for a head with {w.shape[0]} outputs")


def _trained_size(task: TaskDelta) -> tuple[int, int] | None:
    pre = task.meta.get("preprocess")
    if isinstance(pre, dict) and pre.get("image_size"):
        return tuple(int(x) for x in pre["image_size"])
    return None


# Pruned tasks (subtune/delta/pruned.py has the contract).


def _pruned_blocks(task: TaskDelta, where: str) -> dict[str, dict]:
    if "pruned" not in task.meta:
        return {}
    try:
        blocks = pruned_blocks(task.meta)
    except SubtuneError as e:
        raise SubtuneError(f"{where}: {e}") from e
    if not set(blocks) <= {str(x) for x in task.blocks}:
        raise SubtuneError(f"{where}: meta['pruned'] describes blocks {sorted(blocks, key=int)}, the task tunes {task.blocks}")
    return blocks


def _check_pruned_block(where: str, blk: int, base_block: nn.Module, state: dict, spec: dict) -> None:
    try:
        check_pruned_block(base_block, state, spec)
    except SubtuneError as e:
        raise SubtuneError(f"{where}: pruned block {blk}: {e}") from e
