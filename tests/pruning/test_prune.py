"""Pruning a task's tuned blocks, per architecture family: what is pruned, what stays, and the
pruned task file (save, load with weights_only, rebuild) giving the same outputs."""

import dataclasses
import math

import pytest
import torch

from subtune.delta.modules import task_blocks
from subtune.errors import SubtuneError
from subtune.delta import validate_task
from subtune.formats import load_task, save_task
from subtune.delta.attention import HeadAttention
from subtune.pruning.prune import block_input_shapes, prune_task
from subtune.pruning.plan import PruneOptions

from .conftest import FAMILIES


def _inputs(backbone, task, size, batch=3):
    shapes = block_input_shapes(backbone, task.blocks, size)
    g = torch.Generator().manual_seed(0)
    return {b: torch.randn(batch, *shapes[b], generator=g) for b in task.blocks}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pruned_file_rebuilds_to_the_pruned_modules(family, family_models, pruned_half, tmp_path):
    base, backbone, task, size = family_models(family)
    result = pruned_half(family)
    path = tmp_path / "pruned.pt"
    save_task(path, result.task)
    loaded = load_task(path)  # torch.load(weights_only=True) inside
    validate_task(loaded, base, backbone)
    rebuilt = task_blocks(loaded, backbone)
    xs = _inputs(backbone, task, size)
    with torch.no_grad():
        for b, pruned, again, original in zip(task.blocks, result.modules, rebuilt, task_blocks(task, backbone)):
            y = pruned(xs[b])
            assert torch.equal(again(xs[b]), y), f"block {b}: the file does not rebuild to the pruned block"
            assert y.shape == original(xs[b]).shape  # a block's input and output widths stay
    report = result.report
    assert report["params"][1] < report["params"][0] and report["flops"][1] < report["flops"][0]
    assert sum(p.numel() for m in rebuilt for p in m.parameters()) == report["params"][1]
    for b, info in report["blocks"].items():
        for layer, (before, kept) in info["kept"].items():
            assert kept == math.floor(before * 0.5), (b, layer)


def test_resnet_groups_are_inside_the_block_only(family_models, pruned_half):
    """Bottleneck with a downsample: conv1 and conv2 lose channels; conv3 and the downsample keep
    the block's output width."""
    base, backbone, task, size = family_models("resnet50")
    result = pruned_half("resnet50")
    first = result.modules[0]
    original = backbone.blocks[task.first - 1]
    assert first.conv1.out_channels == original.conv1.out_channels // 2 == first.bn1.num_features
    assert first.conv2.in_channels == first.conv1.out_channels
    assert first.conv3.out_channels == original.conv3.out_channels
    assert first.downsample[0].out_channels == original.downsample[0].out_channels
    assert first.conv1.in_channels == original.conv1.in_channels


def test_depthwise_and_squeeze_excitation(family_models, pruned_half):
    base, backbone, task, size = family_models("mobilenetv3")
    result = pruned_half("mobilenetv3")
    ds, ir = result.modules  # DepthwiseSeparableConv (SE only), InvertedResidual (expansion)
    assert ds.se.conv_reduce.out_channels == 4 and ds.conv_dw.out_channels == backbone.blocks[0].conv_dw.out_channels
    assert ir.conv_pw.out_channels == ir.conv_dw.out_channels == ir.conv_dw.groups == ir.bn1.num_features == 36
    assert ir.conv_pwl.in_channels == 36 and ir.conv_pwl.out_channels == backbone.blocks[1].conv_pwl.out_channels


def test_vit_prunes_heads_and_mlp_with_consistent_bookkeeping(family_models, pruned_half):
    base, backbone, task, size = family_models("vit")
    result = pruned_half("vit")
    for block in result.modules:
        attn = block.self_attention
        assert isinstance(attn, HeadAttention) and attn.num_heads == 2 and attn.head_dim == 16
        assert attn.in_proj_weight.shape == (3 * 2 * 16, 64) and attn.out_proj.weight.shape == (64, 32)
        assert block.mlp[0].out_features == block.mlp[3].in_features == 64
    assert result.task.meta["pruned"]["blocks"]["3"]["heads"] == {"self_attention": 2}
    keep_heads = prune_task(task, base, PruneOptions(0.5, heads=False), backbone=backbone, input_size=size)
    assert keep_heads.modules[0].self_attention.num_heads == 4


def test_head_attention_equals_multihead_attention():
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    attn = HeadAttention.from_mha(mha).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, x, x)[0], mha(x, x, x, need_weights=False)[0], atol=1e-6, rtol=1e-5)
        attn.keep_heads([0, 2])  # dropping heads 1 and 3 = zeroing their output-projection columns
        mha.out_proj.weight[:, 8:16] = 0
        mha.out_proj.weight[:, 24:32] = 0
        torch.testing.assert_close(attn(x)[0], mha(x, x, x, need_weights=False)[0], atol=1e-6, rtol=1e-5)


def test_global_scope_and_round_to(family_models):
    base, backbone, task, size = family_models("resnet50")
    local = prune_task(task, base, PruneOptions(0.3, scope="local"), backbone=backbone, input_size=size).report
    glob = prune_task(task, base, PruneOptions(0.3, "l1", "global"), backbone=backbone, input_size=size).report
    kept = [k for info in glob["blocks"].values() for k in info["kept"].values()]
    assert sum(n for _, n in kept) == math.floor(sum(t for t, _ in kept) * 0.7)  # ranked across all blocks
    assert len({n for _, n in kept}) > 1  # ...so layers differ, unlike local scope
    assert {n for info in local["blocks"].values() for _, n in info["kept"].values()} == {math.floor(128 * 0.7)}
    rounded = prune_task(task, base, PruneOptions(0.3, scope="global", round_to=8), backbone=backbone, input_size=size)
    assert all(n % 8 == 0 for info in rounded.report["blocks"].values() for _, n in info["kept"].values())


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, float("nan")])
def test_ratio_outside_zero_one_is_refused(ratio, family_models):
    base, backbone, task, size = family_models("resnet18")
    with pytest.raises(SubtuneError, match="strictly between 0 and 1"):
        prune_task(task, base, PruneOptions(ratio), backbone=backbone)


def test_ratio_that_empties_a_layer_is_refused(family_models):
    base, backbone, task, size = family_models("mobilenetv3")  # block 1's SE reduces to 8 channels
    with pytest.raises(SubtuneError, match="would remove every channel of block 1 se.conv_reduce"):
        prune_task(task, base, PruneOptions(0.9), backbone=backbone, input_size=size)
    base, backbone, task, size = family_models("vit")  # 4 heads: 0.8 keeps floor(0.8) = 0
    with pytest.raises(SubtuneError, match="every attention head"):
        prune_task(task, base, PruneOptions(0.8), backbone=backbone, input_size=size)


def test_pruning_a_pruned_task_is_refused(family_models, pruned_half):
    base, backbone, task, size = family_models("resnet18")
    pruned = pruned_half("resnet18").task
    with pytest.raises(SubtuneError, match=r"already pruned \(ratio 0.5\)"):
        prune_task(pruned, base, PruneOptions(0.5), backbone=backbone)


def test_tampered_pruned_files_are_refused(family_models, pruned_half):
    base, backbone, task, size = family_models("vit")
    pruned = pruned_half("vit").task
    spec = pruned.meta["pruned"]
    blocks = {**spec["blocks"], "3": {**spec["blocks"]["3"], "heads": {"self_attention": 3}}}
    meta = {**pruned.meta, "pruned": {**spec, "blocks": blocks}}
    with pytest.raises(SubtuneError, match="inconsistent head count"):
        validate_task(dataclasses.replace(pruned, meta=meta), base, backbone)
    state = {k: dict(v) for k, v in pruned.block_state.items()}
    state["4"]["mlp.3.weight"] = state["4"]["mlp.3.weight"][:, :-1]  # fc2 inputs no longer match fc1 outputs
    with pytest.raises(SubtuneError, match="pruned block 4: pruned layers do not fit together"):
        validate_task(dataclasses.replace(pruned, block_state=state), base, backbone)
    with pytest.raises(SubtuneError, match="is not a 'subtune.pruned/1' description"):
        validate_task(dataclasses.replace(pruned, meta={**pruned.meta, "pruned": "half"}), base, backbone)
    unpruned_meta = {k: v for k, v in pruned.meta.items() if k != "pruned"}  # smaller shapes need meta["pruned"]
    with pytest.raises(SubtuneError, match="has shape"):
        validate_task(dataclasses.replace(pruned, meta=unpruned_meta), base, backbone)
    base, backbone, task, size = family_models("resnet18")
    pruned = pruned_half("resnet18").task
    state = {k: dict(v) for k, v in pruned.block_state.items()}
    state["3"]["conv2.weight"] = torch.zeros(100, 64, 3, 3)  # the block's output width changed
    with pytest.raises(SubtuneError, match="pruned block 3"):
        validate_task(dataclasses.replace(pruned, block_state=state), base, backbone)
