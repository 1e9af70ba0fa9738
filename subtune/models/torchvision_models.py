"""torchvision ResNets (residual blocks layer1..layer4 in order) and Vision Transformers
(encoder layers)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from subtune.models.adapter import Adapter, Backbone

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
VITS = ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"]


class ViTStem(nn.Module):
    """Patchify, prepend the class token, add position embeddings (VisionTransformer.forward's
    first half)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.vit._process_input(x)
        cls = self.vit.class_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        return self.vit.encoder.dropout(x + self.vit.encoder.pos_embedding)


class ViTNeck(nn.Module):
    """Final LayerNorm, the class token, and any pre-logits layer: what the head sees."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.vit.encoder.ln(x)[:, 0]
        for name, layer in self.vit.heads.named_children():
            if name != "head":
                x = layer(x)
        return x


class TorchvisionAdapter(Adapter):
    family = "torchvision"

    def names(self) -> list[str]:
        return RESNETS + VITS

    def build(self, name: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **arch_kwargs)

    def input_size(self, arch_kwargs: dict[str, Any]) -> tuple[int, int]:
        size = int(arch_kwargs.get("image_size", 224))
        return (size, size)

    def split(self, model: nn.Module) -> Backbone:
        if hasattr(model, "layer1"):
            return self._split_resnet(model)
        return self._split_vit(model)

    def _split_resnet(self, m: nn.Module) -> Backbone:
        blocks, names, stages = [], [], {}
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            start = len(blocks)
            for i, block in enumerate(getattr(m, stage)):
                blocks.append(block)
                names.append(f"{stage}.{i}")
            stages[stage] = list(range(start + 1, len(blocks) + 1))
        return Backbone(
            model=m,
            stem=nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool),
            blocks=blocks,
            neck=nn.Sequential(m.avgpool, nn.Flatten(1)),
            classifier=m.fc,
            block_names=names,
            stages=stages,
        )

    def _split_vit(self, m: nn.Module) -> Backbone:
        layers = list(m.encoder.layers)
        return Backbone(
            model=m,
            stem=ViTStem(m),
            blocks=layers,
            neck=ViTNeck(m),
            classifier=m.heads.head,
            block_names=[f"encoder.layers.encoder_layer_{i}" for i in range(len(layers))],
            stages={"encoder": list(range(1, len(layers) + 1))},
        )

