"""Each adapter's parts must compose back into the model's own forward."""

import pytest
import torch

from subtune.errors import SubtuneError
from subtune.models import build_model, get_adapter, known_architectures
from subtune.models.blocks import parse_blocks

CASES = [
    ("subtune:tiny_resnet", {}, 8, 64),
    ("torchvision:resnet18", {}, 8, 512),
    ("torchvision:resnet50", {}, 16, 2048),
    ("torchvision:vit_b_16", {"image_size": 32}, 12, 768),
    ("timm:efficientnet_lite0", {}, 16, 1280),
    ("timm:mobilenetv3_small_100", {}, 12, 1024),
]


@pytest.mark.parametrize("arch,kwargs,blocks,features", CASES)
def test_parts_compose_to_forward(arch, kwargs, blocks, features):
    torch.manual_seed(0)
    model, bb = build_model(arch, kwargs)
    assert bb.num_blocks == blocks and bb.feature_dim == features
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = bb.stem(x)
        for block in bb.blocks:
            h = block(h)
        torch.testing.assert_close(bb.classifier(bb.neck(h)), model(x), rtol=0, atol=0)
    assert sorted(b for stage in bb.stages.values() for b in stage) == list(range(1, blocks + 1))


def test_resnet50_block_numbering_follows_the_paper():
    _, bb = build_model("torchvision:resnet50")
    assert [len(bb.stages[s]) for s in ("layer1", "layer2", "layer3", "layer4")] == [3, 4, 6, 3]
    assert parse_blocks("layer4", bb) == [14, 15, 16]
    assert parse_blocks("13-14", bb) == [13, 14]
    assert bb.block_names[12] == "layer3.5"


@pytest.mark.parametrize("spec", ["0-2", "15-17", "3,5", "x", "layer9"])
def test_bad_block_specs(spec):
    _, bb = build_model("torchvision:resnet50")
    with pytest.raises(SubtuneError):
        parse_blocks(spec, bb)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(SubtuneError, match="torchvision:resnet50"):
        get_adapter("torchvision:resnet51")
    assert "timm:efficientnet_lite0" in known_architectures()


def test_foreign_state_dict_maps_by_order():
    """The EfficientNet-Lite0 package's .pth uses other names in the same order."""
    from subtune.models import make_base

    model, _ = build_model("timm:efficientnet_lite0")
    renamed = {f"w{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(model.state_dict().items())}
    base = make_base("timm:efficientnet_lite0", weights=renamed)
    own = model.state_dict()
    assert all(torch.equal(base.state_dict[k], own[k]) for k in own)
    with pytest.raises(SubtuneError, match="do not fit"):
        make_base("timm:efficientnet_lite0", weights={"a": torch.zeros(3)})
