"""Self-attention whose heads can be removed.

`nn.MultiheadAttention` ties the q/k/v width to `embed_dim`, so it cannot lose a head.
`HeadAttention` computes the same function with any number of heads of the original head size:
q/k/v project `embed_dim -> num_heads * head_dim` and the output projection maps back to
`embed_dim`, so the block's input and output widths never change. Its parameter names are
MultiheadAttention's (`in_proj_weight`, `in_proj_bias`, `out_proj.*`), so a pruned task's
block state has the same keys as the base block's, only smaller shapes.

Pure PyTorch: the compiler rebuilds pruned blocks with it, without Torch-Pruning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from subtune.errors import SubtuneError


class HeadAttention(nn.Module):
    """Batch-first self-attention, called like torchvision's `self_attention(x, x, x, need_weights=False)`."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool = True):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "HeadAttention":
        """The same attention with the same weights (all heads kept)."""
        if not mha.batch_first or not mha._qkv_same_embed_dim or mha.bias_k is not None:
            raise SubtuneError("head pruning supports batch-first self-attention with one packed q/k/v "
                               "projection and no bias_k/bias_v (torchvision ViT); this attention layer differs")
        attn = cls(mha.embed_dim, mha.num_heads, mha.head_dim, bias=mha.in_proj_bias is not None)
        attn.load_state_dict(mha.state_dict())
        return attn

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, **_ignored) -> tuple[torch.Tensor, None]:
        # Self-attention only: the key and value arguments are the query in every caller (torchvision ViT).
        b, n, _ = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as MultiheadAttention
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)), None

    def head_importance(self, p: int) -> torch.Tensor:
        """One score per head: the mean over its channels of sum |w|^p over the q, k, v rows and
        the output-projection column of that channel (Torch-Pruning's magnitude importance for a
        head group), normalised to mean 1."""
        inner = self.num_heads * self.head_dim
        w = self.in_proj_weight.detach().abs().pow(p).view(3, inner, -1).sum(-1)  # [3, inner]
        if self.in_proj_bias is not None:
            w = w + self.in_proj_bias.detach().abs().pow(p).view(3, inner)
        out = self.out_proj.weight.detach().abs().pow(p).sum(0)  # [inner]
        per_channel = (w.sum(0) + out) / 4
        heads = per_channel.view(self.num_heads, self.head_dim).mean(1)
        return heads / heads.mean().clamp_min(1e-12)

    @torch.no_grad()
    def keep_heads(self, heads: list[int]) -> None:
        """Keep only these heads (indices into the current heads), in order."""
        idx = torch.cat([torch.arange(h * self.head_dim, (h + 1) * self.head_dim) for h in sorted(heads)])
        inner = self.num_heads * self.head_dim
        rows = torch.cat([idx + j * inner for j in range(3)])
        self.in_proj_weight = nn.Parameter(self.in_proj_weight[rows].clone())
        if self.in_proj_bias is not None:
            self.in_proj_bias = nn.Parameter(self.in_proj_bias[rows].clone())
        self.out_proj.weight = nn.Parameter(self.out_proj.weight[:, idx].clone())
        self.out_proj.in_features = len(idx)
        self.num_heads = len(heads)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"
