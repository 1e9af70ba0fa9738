"""A four-block ResNet small enough to export in a few seconds, registered as `tiny:resnet4`.

Imported by conftest.py; subprocess tests import it too (it registers on import)."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.resnet import BasicBlock

from subtune.models.adapter import Adapter, Backbone, register

ARCH = "tiny:resnet4"
SIZE = 16


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layers = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8), BasicBlock(8, 16, stride=2, downsample=down),
                                    BasicBlock(16, 16))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))))


class TinyAdapter(Adapter):
    family = "tiny"

    def names(self) -> list[str]:
        return ["resnet4"]

    def build(self, name: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        return TinyResNet(**arch_kwargs)

    def input_size(self, arch_kwargs: dict[str, Any]) -> tuple[int, int]:
        return (SIZE, SIZE)

    def split(self, m: nn.Module) -> Backbone:
        blocks = list(m.layers)
        return Backbone(model=m, stem=m.stem, blocks=blocks, neck=m.pool, classifier=m.fc,
                        block_names=[f"layers.{i}" for i in range(len(blocks))], stages={"all": [1, 2, 3, 4]})


register(TinyAdapter())
