"""Synthetic task deltas for tests and latency benchmarks: the base's blocks with seeded noise
added, so their weights differ from the base's (identical copies would let a runtime share
memory and flatter the measurement). They predict nothing useful."""

from __future__ import annotations

import torch

from subtune.delta import TaskDelta, make_task
from subtune.models import Backbone, BaseModel


def synthetic_task(base: BaseModel, name: str, blocks: list[int], *, num_classes: int = 10,
                   siamese: bool = False, seed: int = 0, noise: float = 0.05,
                   backbone: Backbone | None = None) -> TaskDelta:
    if backbone is None:
        _, backbone = base.build()
    g = torch.Generator().manual_seed(seed)
    modules = []
    for b in blocks:
        block = backbone.blocks[b - 1]
        sd = {}
        for k, v in block.state_dict().items():
            if v.is_floating_point() and "running_var" not in k:
                scale = v.abs().mean().clamp_min(1e-3)
                v = v + noise * scale * torch.randn(v.shape, generator=g, dtype=v.dtype)
            sd[k] = v
        modules.append(_Holder(sd))
    in_dim = backbone.feature_dim * (2 if siamese else 1)
    head = torch.nn.Linear(in_dim, num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(num_classes, in_dim, generator=g) / in_dim**0.5)
        head.bias.copy_(0.1 * torch.randn(num_classes, generator=g))
    return make_task(base, name, blocks, modules, head, siamese=siamese,
                     meta={"synthetic": True, "seed": seed, "noise": noise})


class _Holder(torch.nn.Module):
    """Presents a ready state_dict where make_task expects a module."""

    def __init__(self, sd):
        super().__init__()
        self._sd = sd

    def state_dict(self, *args, **kwargs):  # noqa: D102
        return dict(self._sd)
