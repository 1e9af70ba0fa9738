"""Recovery training after pruning, accuracy, and the ratio x scope x norm sweep, on tiny data."""

import pytest
import torch

from subtune.pruning.plan import PruneOptions
from subtune.pruning.prune import prune_task
from subtune.pruning.recover import CachedData, accuracy, recover
from subtune.pruning.sweep import best_per_bin, plot_sweep, run_sweep, sweep_table
from subtune.training.network import freeze
from subtune.training.trainer import TrainConfig


@pytest.fixture(scope="module")
def tiny(family_models):
    """The tiny ViT's blocks 3-4, 5 classes, 40 random images at 32 px (training data is the test
    data: recovery must at least fit it)."""
    base, _, task, size = family_models("vit")
    _, backbone = base.build()
    backbone = freeze(backbone)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(40, 3, *size, generator=g), torch.arange(40) % 5
    return base, backbone, task, CachedData(backbone, task.first, images, labels)


def test_recovery_trains_the_pruned_blocks_and_head(tiny):
    base, backbone, task, data = tiny
    pruned = prune_task(task, base, PruneOptions(0.5), backbone=backbone, input_size=(32, 32)).task
    before = accuracy(pruned, backbone, data)
    trained = recover(pruned, base, backbone, data, TrainConfig(epochs=12, batch_size=20, lr=5e-3))
    assert accuracy(trained, backbone, data) >= max(before + 0.2, 0.6)
    assert trained.meta["pruned"] == pruned.meta["pruned"]  # still the same pruned structure
    assert trained.meta["recovery"]["epochs"] == 12
    for b in task.blocks:
        assert {k: v.shape for k, v in trained.block_state[str(b)].items()} == \
               {k: v.shape for k, v in pruned.block_state[str(b)].items()}


def test_sweep_points_table_and_plot(tiny, tmp_path):
    base, backbone, task, data = tiny
    sweep = run_sweep(task, base, backbone, data, ratios=(0.5, 0.995), input_size=(32, 32))
    assert len(sweep.points) == 2 * 2 * 2
    ok = [p for p in sweep.points if p.error is None]
    assert {p.ratio for p in ok} == {0.5} and all(0 < p.params_kept < 0.6 for p in ok)
    assert all("would remove every channel" in p.error for p in sweep.points if p.ratio == 0.995)
    assert all(p.accuracy == p.accuracy_pruned for p in ok)  # no recovery training without train data
    assert best_per_bin(sweep.points)[0].accuracy == max(p.accuracy for p in ok if p.params_kept < 0.55)
    assert "skipped" in sweep_table(sweep)
    plot_sweep(sweep, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
