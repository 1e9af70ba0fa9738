"""Tiny models per architecture family, built in code with fixed seeds.

torchvision's named ViTs are ViT-B and larger (86M parameters and up), too slow to compile
many times in a fast test; `pruningtest:vit` is a 4-layer, 4-head torchvision VisionTransformer
registered as one small adapter with the ViT split of the torchvision adapter."""

from __future__ import annotations

import pytest

from subtune.models import Adapter, register
from subtune.models.torchvision_models import TorchvisionAdapter


class TinyAdapter(Adapter):
    family = "pruningtest"  # unique: other test folders register their own tiny models

    def names(self) -> list[str]:
        return ["vit"]

    def build(self, name, arch_kwargs):
        from torchvision.models import VisionTransformer

        return VisionTransformer(image_size=32, patch_size=16, num_layers=4, num_heads=4, hidden_dim=64,
                                 mlp_dim=128, **arch_kwargs)

    def input_size(self, arch_kwargs):
        return (32, 32)

    def split(self, model):
        return TorchvisionAdapter()._split_vit(model)


register(TinyAdapter())

# arch, arch_kwargs, input size, tuned blocks: one tiny model per family the pruner supports.
FAMILIES = {
    "resnet18": ("torchvision:resnet18", {"num_classes": 5}, (32, 32), [3, 4]),  # BasicBlock; block 3 has a downsample
    "resnet50": ("torchvision:resnet50", {"num_classes": 5}, (32, 32), [4, 5]),  # Bottleneck; block 4 has a downsample
    "efficientnet": ("timm:efficientnet_lite0", {"num_classes": 5}, (64, 64), [6, 7]),  # depthwise, no SE
    "mobilenetv3": ("timm:mobilenetv3_small_100", {"num_classes": 5}, (64, 64), [1, 2]),  # depthwise + SE
    "vit": ("pruningtest:vit", {"num_classes": 5}, (32, 32), [3, 4]),  # MLP width and attention heads
}


@pytest.fixture(scope="session")
def family_models():
    """family -> (base, backbone, synthetic task on its tuned blocks, input size), built once."""
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    cache = {}

    def get(family):
        if family not in cache:
            arch, kwargs, size, blocks = FAMILIES[family]
            base = make_base(arch, kwargs, seed=0)
            _, backbone = base.build()
            task = synthetic_task(base, f"{family}_task", blocks, backbone=backbone, seed=1)
            cache[family] = (base, backbone, task, size)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def pruned_half(family_models):
    """family -> PruneResult of its task pruned at ratio 0.5 (local, L2), computed once."""
    from subtune.pruning.plan import PruneOptions
    from subtune.pruning.prune import prune_task

    cache = {}

    def get(family):
        if family not in cache:
            base, backbone, task, size = family_models(family)
            cache[family] = prune_task(task, base, PruneOptions(0.5), backbone=backbone, input_size=size)
        return cache[family]

    return get
