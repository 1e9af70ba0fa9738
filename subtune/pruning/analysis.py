"""Analysis: which channels inside a tuned block can be pruned together, and how much each matters.

Torch-Pruning's dependency graph finds the coupled channel groups (a conv's outputs, its
BatchNorm, a depthwise conv, a squeeze-excitation gate and the next layer's inputs). The block
is traced between two identity "boundary" layers, and every group coupled to the block's input
or output tensor is excluded, so a block's input and output widths never change: the shared
layers and the batch concatenation around it stay untouched. Attention heads are a group of
their own, handled by HeadAttention (Torch-Pruning cannot re-size nn.MultiheadAttention's heads).

Nothing is pruned here; `PrunableBlock.apply` prunes the channels a plan chose.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from subtune.errors import SubtuneError
from subtune.delta.attention import HeadAttention

CHANNELS, HEADS = "channels", "heads"


@dataclass
class ChannelGroup:
    """Channels (or attention heads) of one tuned block that are kept or removed together."""

    block: int  # 1-based block number
    layer: str  # the group's first layer inside the block, e.g. "conv1", "mlp.0", "self_attention"
    kind: str  # CHANNELS or HEADS
    importance: torch.Tensor  # one score per channel or head, normalised to mean 1 within the group

    @property
    def size(self) -> int:
        return len(self.importance)


def _tp():
    import torch_pruning as tp

    return tp


class _Boundary(nn.Module):
    """An identity layer marking a block's input or output; its groups are never pruned."""

    def __init__(self, channels: int, tokens: bool):
        super().__init__()
        if tokens:
            self.layer = nn.Linear(channels, channels, bias=False)
            eye = torch.eye(channels)
        else:
            self.layer = nn.Conv2d(channels, channels, 1, bias=False)
            eye = torch.eye(channels).view(channels, channels, 1, 1)
        with torch.no_grad():
            self.layer.weight.copy_(eye)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class PrunableBlock:
    """One tuned block (a private copy) with its prunable groups and their importance."""

    def __init__(self, number: int, block: nn.Module, input_shape: tuple[int, ...], norm_p: int):
        self.number = number
        self.module = block.requires_grad_(True)  # a private copy; Torch-Pruning traces autograd
        self.input_shape = tuple(input_shape)
        self.attention = _to_head_attention(block)
        self._check_supported()
        self._roots: dict[str, tuple[nn.Module, object]] = {}
        self.groups = self._channel_groups(norm_p) + [
            ChannelGroup(number, path, HEADS, attn.head_importance(norm_p)) for path, attn in self.attention.items()]

    def _check_supported(self) -> None:
        for name, m in self.module.named_modules():
            if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups < m.out_channels:
                raise SubtuneError(f"block {self.number} layer {name}: grouped convolutions ({m.groups} groups) "
                                   "are not supported by pruning; only dense and depthwise convs are")

    def _channel_groups(self, norm_p: int) -> list[ChannelGroup]:
        tp = _tp()
        tokens = len(self.input_shape) == 2
        x = torch.randn(1, *self.input_shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = self.module.eval()(x)
        width_in, width_out = (self.input_shape[-1], y.shape[-1]) if tokens else (self.input_shape[0], y.shape[1])
        pre, post = _Boundary(width_in, tokens), _Boundary(width_out, tokens)
        self._wrapper = nn.Sequential(pre, self.module, post).eval()
        with _quiet(), torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                self._wrapper, example_inputs=x, customized_pruners={HeadAttention: _opaque_attention()})
        self.graph = graph
        out_fn = graph.get_pruner_of_module(post.layer).prune_in_channels
        out_group = graph.get_pruning_group(post.layer, out_fn, list(range(width_out)))
        ignored = [pre.layer, post.layer] + [d.target.module for d, _ in out_group
                                             if graph.is_out_channel_pruning_fn(d.handler)]
        importance = tp.importance.MagnitudeImportance(p=norm_p)  # group_reduction and normaliser: "mean"
        order = {m: i for i, m in enumerate(self.module.modules())}
        names = {m: n for n, m in self.module.named_modules()}
        groups = []
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
            first = min((d.target.module for d, _ in group if graph.is_out_channel_pruning_fn(d.handler)
                         and isinstance(d.target.module, (nn.Conv2d, nn.Linear)) and d.target.module in order),
                        key=order.__getitem__)  # a group is named by its first layer in the block
            with torch.no_grad():
                imp = importance(group)  # indexed like the group's root channels, so pruning uses that root
            self._roots[names[first]] = (group[0].dep.target.module, group[0].dep.handler)
            groups.append((order[first], ChannelGroup(self.number, names[first], CHANNELS, imp.detach().float().cpu())))
        return [g for _, g in sorted(groups, key=lambda item: item[0])]

    def apply(self, keep: dict[tuple[str, str], list[int]]) -> None:
        """Prune to the kept indices, keyed by (kind, layer); groups not named stay whole."""
        for group in self.groups:
            kept = keep.get((group.kind, group.layer))
            if kept is None or len(kept) == group.size:
                continue
            if group.kind == HEADS:
                self.attention[group.layer].keep_heads(kept)
                continue
            root, fn = self._roots[group.layer]
            drop = sorted(set(range(group.size)) - set(kept))
            with _quiet():
                tp_group = self.graph.get_pruning_group(root, fn, drop)
                if not self.graph.check_pruning_group(tp_group):
                    raise SubtuneError(f"block {self.number} {group.layer}: Torch-Pruning refused to remove "
                                       f"{len(drop)} of {group.size} channels")
                tp_group.prune()

    def spec(self) -> dict:
        """This block's entry in meta['pruned']['blocks'] (see rebuild.py)."""
        return {"input_shape": list(self.input_shape),
                "heads": {path: attn.num_heads for path, attn in self.attention.items()}}


def _opaque_attention():
    """A Torch-Pruning pruner that shows a HeadAttention as one layer, embed_dim wide in and out.
    That width is the block's, which is never pruned; the heads are pruned by HeadAttention."""
    tp = _tp()

    class OpaqueAttention(tp.pruner.function.BasePruningFunc):
        TARGET_MODULES = HeadAttention

        def prune_out_channels(self, layer, idxs):
            raise SubtuneError("internal: an attention layer's width is the block's and must not be pruned")

        def prune_in_channels(self, layer, idxs):
            raise SubtuneError("internal: an attention layer's width is the block's and must not be pruned")

        def get_out_channels(self, layer):
            return layer.embed_dim

        def get_in_channels(self, layer):
            return layer.embed_dim

    return OpaqueAttention()


def _to_head_attention(block: nn.Module) -> dict[str, HeadAttention]:
    """Replace every nn.MultiheadAttention in the block by an equal HeadAttention."""
    found = {}
    for name, m in list(block.named_modules()):
        if isinstance(m, (nn.MultiheadAttention, HeadAttention)):
            attn = m if isinstance(m, HeadAttention) else HeadAttention.from_mha(m)
            parent, _, leaf = name.rpartition(".")
            setattr(block.get_submodule(parent) if parent else block, leaf, attn)
            found[name] = attn
    return found


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
