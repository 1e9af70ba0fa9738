"""Size and compute of tuned blocks: parameters, and FLOPs at the block's input shape.

FLOPs are torch.utils.flop_counter's: convolutions, matrix products and attention (2 per
multiply-add), batch 1; normalisation and activations are not counted.
"""

from __future__ import annotations

import torch
from torch import nn


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def flops(module: nn.Module, input_shape: tuple[int, ...] | list[int]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *input_shape)
    with FlopCounterMode(display=False) as counter:
        module.eval()(x)
    return int(counter.get_total_flops())
