"""BatchNorm folded into the convolution before it, for the task blocks of the lowered module.

Why here and not in the ONNX optimizer (which folds them too): the optimizer makes the folded
weights as new arrays while the module still holds the unfolded ones, so every task's weights
were in memory twice during export (and once more in the task file's tensors). Folding in
PyTorch, one task at a time, lets the module hold the folded weights only; the exporter's
initializers are then views of them (no copy), and the task's own tensors can be given back as
soon as its blocks are built (formats.release_task_memory).

Which pairs fold: a BatchNorm2d whose one input is the output of a Conv2d that nothing else reads,
each called once (found by tracing the block with torch.fx), in eval mode with running
statistics. The exact types only: a subclass may compute something else (timm's Conv2dSame pads
first, BatchNormAct2d applies an activation), and a block torch.fx cannot trace keeps its
BatchNorms for the ONNX optimizer to fold. The folded BatchNorm becomes nn.Identity in the same
module, so the block's class, names and forward stay as they were.

The reference verification compares with (compiler/reference.py) runs the task's own unfolded
blocks, so the folding is checked like everything else the compiler does.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from subtune.delta.pruned import pruned_blocks, rebuild_block

if TYPE_CHECKING:
    from subtune.delta import TaskDelta
    from subtune.models import Backbone

log = logging.getLogger("subtune")


def foldable_pairs(block: nn.Module) -> list[tuple[str, str]]:
    """(conv path, BatchNorm path) of each pair in `block` that folds (see the module docstring);
    [] when there is none or the block cannot be traced."""
    modules = dict(block.named_modules())
    if not any(type(m) is nn.BatchNorm2d for m in modules.values()):
        return []
    try:
        graph = torch.fx.Tracer().trace(block)
    except Exception as e:  # torch.fx cannot trace data-dependent control flow; nothing is lost
        log.debug("BatchNorm folding skipped for a %s block: torch.fx could not trace it (%s)",
                  type(block).__name__, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        return []
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    read_directly = {node.target.rsplit(".", 1)[0] for node in graph.nodes if node.op == "get_attr"}
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) is not nn.BatchNorm2d:
            continue
        bn, source = modules[node.target], node.args[0] if node.args else None
        if (len(node.args) != 1 or node.kwargs or not isinstance(source, torch.fx.Node)
                or source.op != "call_module" or type(modules[source.target]) is not nn.Conv2d):
            continue
        if (len(source.users) != 1 or calls[source.target] != 1 or calls[node.target] != 1
                or {source.target, node.target} & read_directly
                or not bn.track_running_stats or bn.running_mean is None or bn.training):
            continue
        pairs.append((source.target, node.target))
    return pairs


class BlockFolder:
    """Builds a base block's folded copies from task block states, fast: the block is traced once,
    and each copy holds new tensors only (none shared with the state, none of the base's)."""

    def __init__(self, base_block: nn.Module):
        self.pairs = foldable_pairs(base_block.eval())
        self.template: nn.Module | None = None
        if self.pairs:
            template = copy.deepcopy(base_block).eval()
            self._eps = {bn: template.get_submodule(bn).eps for _, bn in self.pairs}
            for conv, bn in self.pairs:
                module = template.get_submodule(conv)
                if module.bias is None:
                    module.bias = nn.Parameter(torch.zeros(module.out_channels))
                template.set_submodule(bn, nn.Identity())
            self.template = template

    def build(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """The folded block carrying `state` (the unfolded block's state_dict), in eval mode."""
        folded: dict[str, torch.Tensor] = {}
        for conv, bn in self.pairs:
            weight, bias = fuse_conv_bn_weights(state[f"{conv}.weight"], state.get(f"{conv}.bias"),
                                                state[f"{bn}.running_mean"], state[f"{bn}.running_var"],
                                                self._eps[bn], state.get(f"{bn}.weight"), state.get(f"{bn}.bias"))
            folded[f"{conv}.weight"], folded[f"{conv}.bias"] = weight.detach(), bias.detach()
        own = self.template.state_dict(keep_vars=True)
        memo: dict[int, object] = {}
        for name, tensor in own.items():
            value = folded[name] if name in folded else state[name].detach().clone()
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f"state tensor {name!r} has shape {tuple(value.shape)}, the block {tuple(tensor.shape)}")
            memo[id(tensor)] = (nn.Parameter(value, requires_grad=tensor.requires_grad)
                                if isinstance(tensor, nn.Parameter) else value)
        return copy.deepcopy(self.template, memo).eval()  # the structure copied, each tensor from memo


def fold_in_place(block: nn.Module) -> nn.Module:
    """`block` (eval mode, the caller's own copy) with its foldable pairs folded."""
    with torch.no_grad():
        for conv_path, bn_path in foldable_pairs(block):
            conv, bn = block.get_submodule(conv_path), block.get_submodule(bn_path)
            weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                                bn.weight, bn.bias)
            conv.weight, conv.bias = weight, bias
            block.set_submodule(bn_path, nn.Identity())
    return block


def folded_task_blocks(task: TaskDelta, backbone: Backbone, folders: dict[int, BlockFolder]) -> nn.ModuleList:
    """A task's tuned blocks with their BatchNorms folded, holding new tensors only (none of the
    task's, none of the base's). `folders`: one BlockFolder per base block number, shared across
    the tasks of one lowering (each traces its block once)."""
    pruned = pruned_blocks(task.meta)
    blocks = nn.ModuleList()
    for b in task.blocks:
        state = task.block_state[str(b)]
        if str(b) in pruned:  # a smaller block of its own: rebuilt (a copy), then folded
            blocks.append(fold_in_place(rebuild_block(backbone.blocks[b - 1], state, pruned[str(b)])))
            continue
        folder = folders.get(b) or folders.setdefault(b, BlockFolder(backbone.blocks[b - 1]))
        if folder.template is None:  # nothing folds: a plain copy carrying the task's weights
            block = copy.deepcopy(backbone.blocks[b - 1])
            block.load_state_dict(state, strict=True)
            blocks.append(block.eval())
        else:
            blocks.append(folder.build(state))
    return blocks
