"""`subtune:tiny_resnet`: a deliberately small ResNet (torchvision BasicBlocks, widths 8-64,
8 blocks) for smoke tests and quick demos. Same structure as ResNet-18, 1/8 of the width."""

from __future__ import annotations

from typing import Any

from torch import nn

from subtune.models.adapter import Adapter, Backbone
from subtune.models.torchvision_models import TorchvisionAdapter


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (8, 16, 32, 64), depth: int = 2):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        cin = widths[0]
        for i, w in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            blocks = []
            for j in range(depth):
                down = None
                if j == 0 and (stride != 1 or cin != w):
                    down = nn.Sequential(nn.Conv2d(cin, w, 1, stride, bias=False), nn.BatchNorm2d(w))
                blocks.append(BasicBlock(cin, w, stride if j == 0 else 1, down))
                cin = w
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.avgpool(x).flatten(1))


class TinyAdapter(Adapter):
    family = "subtune"

    def names(self) -> list[str]:
        return ["tiny_resnet"]

    def build(self, name: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        return TinyResNet(**arch_kwargs)

    def input_size(self, arch_kwargs: dict[str, Any]) -> tuple[int, int]:
        return (32, 32)

    def split(self, model: nn.Module) -> Backbone:
        return TorchvisionAdapter._split_resnet(self, model)  # the same parts as a torchvision ResNet

