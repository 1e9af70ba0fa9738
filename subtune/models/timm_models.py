"""timm EfficientNet / MobileNet family: their stage blocks, flattened in order."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from subtune.models.adapter import Adapter, Backbone

NAMES = [
    "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "mobilenetv2_100", "mobilenetv2_140",
    "mobilenetv3_large_100", "mobilenetv3_small_100",
]


class TimmNeck(nn.Module):
    """The layers between the last block and the classifier: for EfficientNet the head conv and
    its norm (the rest of forward_features), then forward_head up to the logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # MobileNetV3 pools before its head conv inside forward_head; EfficientNet does not.
        self.tail = [n for n in ("conv_head", "bn2") if not hasattr(model, "norm_head") and hasattr(model, n)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.tail:
            x = getattr(self.model, name)(x)
        return self.model.forward_head(x, pre_logits=True)


class TimmAdapter(Adapter):
    family = "timm"

    def names(self) -> list[str]:
        return NAMES

    def build(self, name: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, **arch_kwargs)

    def normalization(self, model: nn.Module) -> tuple[list[float], list[float]]:
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        return list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))

    def split(self, m: nn.Module) -> Backbone:
        blocks, names, stages = [], [], {}
        for s, stage in enumerate(m.blocks):
            start = len(blocks)
            for i, block in enumerate(stage):
                blocks.append(block)
                names.append(f"blocks.{s}.{i}")
            stages[f"stage{s}"] = list(range(start + 1, len(blocks) + 1))
        return Backbone(
            model=m,
            stem=nn.Sequential(m.conv_stem, m.bn1),
            blocks=blocks,
            neck=TimmNeck(m),
            classifier=m.classifier,
            block_names=names,
            stages=stages,
        )

