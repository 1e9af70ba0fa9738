"""Rebuild a pruned tuned block from a task file alone (no Torch-Pruning, no pickled modules).

A pruned task file is an ordinary `subtune.task/1` file whose block states are smaller, plus
`meta["pruned"]`, which says which blocks are pruned and the little structure tensor shapes
cannot carry:

    meta["pruned"] = {
        "format": "subtune.pruned/1",
        "blocks": {                     # one entry per pruned block
            "13": {
                "input_shape": [1024, 14, 14],      # the block's input without batch: [C, H, W] or [tokens, dim]
                "heads": {"self_attention": 6},     # ViT only: attention layers rebuilt as HeadAttention
            },
        },
        "report": {"options": {...}, ...},          # how it was pruned, sizes before/after (informational)
    }

Rules the rebuild applies to a deep copy of the base block:
  1. Each attention layer named in `heads` becomes a HeadAttention with that many heads of the
     base's head size (MultiheadAttention cannot have fewer heads than its width allows).
  2. Every parameter or buffer whose shape in the state differs from the base block's is resized
     to the state's shape; the layer's own bookkeeping follows (Conv: channels, and groups for a
     depthwise conv; Linear: features; BatchNorm: num_features). Other layer types cannot change.
  3. The state loads with strict=True.
Validation (`check_pruned_block`) then runs the rebuilt block and the base block on a zero input
of `input_shape`: the output shapes must agree, so a block's input and output widths never move.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from subtune.delta.attention import HeadAttention
from subtune.errors import SubtuneError

PRUNED_FORMAT = "subtune.pruned/1"


def pruned_blocks(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-block specs of a task's `meta["pruned"]` ({} for an unpruned task), shape-checked."""
    pruned = meta.get("pruned")
    if pruned is None:
        return {}
    blocks = pruned.get("blocks") if isinstance(pruned, dict) else None
    if not isinstance(blocks, dict) or pruned.get("format") != PRUNED_FORMAT:
        raise SubtuneError(f"meta['pruned'] is not a {PRUNED_FORMAT!r} description; rewrite the task with "
                           "`subtune prune`")
    for b, spec in blocks.items():
        shape = spec.get("input_shape") if isinstance(spec, dict) else None
        heads = spec.get("heads", {}) if isinstance(spec, dict) else None
        shape_ok = isinstance(shape, list) and len(shape) in (2, 3) and all(isinstance(x, int) and x > 0 for x in shape)
        heads_ok = isinstance(heads, dict) and all(isinstance(k, str) and isinstance(v, int) and v > 0
                                                   for k, v in heads.items())
        if not (shape_ok and heads_ok):
            raise SubtuneError(f"meta['pruned'] block {b}: expected {{'input_shape': [C, H, W] or [tokens, dim], "
                               "'heads': {layer: count >= 1}}; rewrite the task with `subtune prune`")
    return blocks


def rebuild_block(base_block: nn.Module, state: dict[str, torch.Tensor], spec: dict[str, Any]) -> nn.Module:
    """A pruned block: a copy of `base_block` reshaped to `state` and loaded with it (eval mode)."""
    block = copy.deepcopy(base_block)
    for path, heads in spec.get("heads", {}).items():  # rule 1
        _set_submodule(block, path, _head_attention(block, path, heads, state))
    _resize_to(block, state)  # rule 2
    try:
        block.load_state_dict(state, strict=True)  # rule 3
    except RuntimeError as e:
        raise SubtuneError(f"pruned state does not load into the rebuilt block: {_first_line(e)}") from e
    return block.eval()


@torch.no_grad()
def check_pruned_block(base_block: nn.Module, state: dict[str, torch.Tensor], spec: dict[str, Any]) -> nn.Module:
    """Rebuild, then check that the block still maps its input shape to the base block's output shape."""
    block = rebuild_block(base_block, state, spec)
    x = torch.zeros(1, *spec["input_shape"])
    try:
        expected = tuple(base_block.eval()(x).shape)
    except RuntimeError as e:
        raise SubtuneError(f"input_shape {spec['input_shape']} does not fit the base block: {_first_line(e)}") from e
    try:
        found = tuple(block(x).shape)
    except RuntimeError as e:
        raise SubtuneError(f"pruned layers do not fit together: {_first_line(e)}") from e
    if found != expected:
        raise SubtuneError(f"the pruned block outputs {list(found[1:])}, the base block {list(expected[1:])}: "
                           "pruning must keep a block's output channels")
    return block


def _head_attention(block: nn.Module, path: str, heads: int, state: dict[str, torch.Tensor]) -> HeadAttention:
    try:
        layer = block.get_submodule(path)
    except AttributeError:
        raise SubtuneError(f"attention layer {path!r} named in meta['pruned'] is not in the block") from None
    if isinstance(layer, nn.MultiheadAttention):
        layer = HeadAttention.from_mha(layer)
    elif not isinstance(layer, HeadAttention):
        raise SubtuneError(f"{path!r} is a {type(layer).__name__}, not an attention layer whose heads can be pruned")
    w = state.get(f"{path}.in_proj_weight")
    inner = heads * layer.head_dim
    if w is None or w.ndim != 2 or w.shape[0] != 3 * inner:
        found = "missing" if w is None else f"{w.shape[0]} q/k/v rows"
        raise SubtuneError(f"{path}: {heads} heads of size {layer.head_dim} need {3 * inner} q/k/v rows, "
                           f"found {found}: inconsistent head count")
    layer.num_heads = heads
    return layer


def _resize_to(block: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, module in block.named_modules():
        changed = False
        for attr, store in (("_parameters", nn.Parameter), ("_buffers", None)):
            for key, tensor in getattr(module, attr).items():
                new = state.get(f"{name}.{key}" if name else key)
                if tensor is None or new is None or new.shape == tensor.shape:
                    continue
                if new.ndim != tensor.ndim:
                    raise SubtuneError(f"{name}.{key}: {new.ndim}-d in the task, {tensor.ndim}-d in the block")
                empty = torch.empty(new.shape, dtype=tensor.dtype)
                getattr(module, attr)[key] = nn.Parameter(empty, tensor.requires_grad) if store else empty
                changed = True
        if changed:
            _fix_bookkeeping(name, module)


def _fix_bookkeeping(name: str, m: nn.Module) -> None:
    if isinstance(m, nn.modules.conv._ConvNd):
        out, per_group = m.weight.shape[:2]
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        if depthwise:
            if per_group != 1:
                raise SubtuneError(f"{name}: a depthwise conv needs weight [C, 1, ...], found {list(m.weight.shape)}")
            m.groups = m.in_channels = m.out_channels = out
        else:
            if out % m.groups:
                raise SubtuneError(f"{name}: {out} output channels do not divide into {m.groups} groups")
            m.in_channels, m.out_channels = per_group * m.groups, out
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.num_features = m.running_mean.shape[0] if m.running_mean is not None else m.weight.shape[0]
    elif isinstance(m, HeadAttention):
        pass  # rule 1 set num_heads; in/out projections are plain tensors and a Linear
    else:
        raise SubtuneError(f"{name or 'block'} ({type(m).__name__}) cannot change shape in a pruned block")


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
