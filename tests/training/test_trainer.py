"""The trainer: cached and full-forward paths agree, frozen layers stay frozen, seeds reproduce."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subtune.errors import SubtuneError
from subtune.training.cache import ActivationStore
from subtune.training.network import features_point, freeze, run_frozen
from subtune.training.trainer import TrainConfig, Trainer, batch_order, default_epochs

FAST = dict(epochs=2, batch_size=8)


def _params(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("siamese", [False, True])
def test_cached_and_full_forward_paths_give_the_same_model(base, splits, siamese):
    # Same seed, same batches: the only difference is whether the frozen prefix ran once or every
    # step. Both run it in eval mode without gradients, so the weights come out bit-identical.
    cached = Trainer(base, *splits, config=TrainConfig(**FAST, cache=True)).subtune([3, 4], siamese=siamese)
    full = Trainer(base, *splits, config=TrainConfig(**FAST, cache=False)).subtune([3, 4], siamese=siamese)
    assert cached.cached and not full.cached
    assert _same(_params(cached.net), _params(full.net))
    assert cached.val_accuracy == full.val_accuracy and cached.test_accuracy == full.test_accuracy


def test_only_tuned_blocks_and_head_change(base, splits):
    trainer = Trainer(base, *splits, config=TrainConfig(**FAST))
    frozen_before = _params(trainer.backbone.model)
    block_before = _params(trainer.backbone.blocks[2])
    result = trainer.subtune([3])
    assert _same(frozen_before, _params(trainer.backbone.model))  # BatchNorm statistics included
    assert not trainer.backbone.model.training
    tuned = _params(result.net.tuned[0])
    assert not torch.equal(tuned["conv1.weight"], block_before["conv1.weight"])
    assert not torch.equal(tuned["bn1.running_mean"], block_before["bn1.running_mean"])  # statistics update
    assert result.params == sum(p.numel() for p in trainer.backbone.blocks[2].parameters()) + 512 * 3 + 3

    frozen_bn = Trainer(base, *splits, config=TrainConfig(**FAST, freeze_bn=True)).subtune([3])
    stats = _params(frozen_bn.net.tuned[0])
    assert torch.equal(stats["bn1.running_mean"], block_before["bn1.running_mean"])
    assert not torch.equal(stats["conv1.weight"], block_before["conv1.weight"])


def test_seeds_reproduce_and_differ(base, splits):
    trainer = Trainer(base, *splits, config=TrainConfig(**FAST))
    a, b, c = trainer.subtune([5], seed=1), trainer.subtune([5], seed=1), trainer.subtune([5], seed=2)
    assert _same(_params(a.net), _params(b.net))
    assert [(h["loss"], h["train_accuracy"]) for h in a.history] == [(h["loss"], h["train_accuracy"]) for h in b.history]
    assert not torch.equal(a.net.head.weight, c.net.head.weight)


def test_it_learns_the_easy_task(base, splits):
    result = Trainer(base, *splits, config=TrainConfig(epochs=15, batch_size=8, lr=3e-3)).subtune([3])
    assert result.history[-1]["train_accuracy"] == 1.0
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.val_accuracy > 0.5 and result.test_accuracy > 0.5  # three classes: chance is 1/3


def test_linear_and_full_baselines(base, splits):
    trainer = Trainer(base, *splits, config=TrainConfig(epochs=1, batch_size=8))
    lin = trainer.linear()
    assert lin.mode == "linear" and lin.params == 512 * 3 + 3 and lin.cached
    full = trainer.full()
    assert full.mode == "full" and not full.cached
    assert full.params == sum(p.numel() for n, p in trainer.backbone.model.named_parameters()
                              if not n.startswith("fc.")) + 512 * 3 + 3


def test_augmentation_takes_the_full_forward_path(base, splits):
    messages = []
    trainer = Trainer(base, *splits, config=TrainConfig(epochs=1, batch_size=8, augment="flip"), log=messages.append)
    assert "full forward path" in messages[0]
    assert not trainer.subtune([6]).cached


def test_activation_store_memory_disk_and_refusal(base, splits, tmp_path):
    _, bb = base.build()
    bb = freeze(bb)
    train = splits[0]
    memory = ActivationStore(bb, train).get(4)
    disk = ActivationStore(bb, train, memory_budget=0, cache_dir=str(tmp_path)).get(4)
    assert isinstance(disk.data, np.memmap) and not list(tmp_path.iterdir())  # the file is unlinked at once
    idx = np.array([5, 0, 3])
    assert torch.equal(memory[idx], disk[idx])
    assert torch.allclose(memory[idx], run_frozen(bb, train.batch(idx), 0, 4), atol=1e-5)
    feats = ActivationStore(bb, train).get(features_point(bb))
    assert feats[idx].shape == (3, 512)
    with pytest.raises(SubtuneError, match="`cache_dir`"):
        ActivationStore(bb, train, memory_budget=1000).get(4)


def test_trainer_refuses_mismatched_classes(base, splits):
    train, val, test = splits
    bad = val.subset(range(len(val)))
    bad.classes = ["a", "b", "c"]
    with pytest.raises(SubtuneError, match="do not match the training classes"):
        Trainer(base, train, bad, test)


def test_schedule_helpers():
    assert default_epochs(1000) == 50 and default_epochs(1001) == 10
    g = torch.Generator().manual_seed(0)
    assert [len(b) for b in batch_order(9, 4, g)] == [4, 4]  # the lone last image is dropped
    assert sorted(np.concatenate(batch_order(8, 4, g)).tolist()) == list(range(8))
    with pytest.raises(SubtuneError):
        TrainConfig(augment="mixup")


def test_profile_baselines_include_the_rivals_and_the_tradeoff_reads_them(base, splits, tmp_path):
    """`subtune profile --baselines linear,head2toe,lora`: each baseline is a profile row, and
    `subtune-bench --profile` reads them as method entries (taps for the probe and Head2Toe, a
    window over every block for LoRA) beside the windows."""
    import json

    from subtune.benchmarking.tradeoff import load_profile
    from subtune.training.profile import baseline_names, profile_to_json, run_profile

    trainer = Trainer(base, *splits, config=TrainConfig(epochs=1, batch_size=8))
    prof = run_profile(trainer, seeds=[0, 1], starts=[5], baselines="lora,head2toe,linear")
    assert list(prof.baselines) == ["linear", "head2toe", "lora"]  # BASELINES' order, whatever was given
    n = trainer.backbone.num_blocks
    assert prof.baselines["lora"]["blocks"] == [1, n] and len(prof.baselines["head2toe"]["runs"]) == 2
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile_to_json(prof, context={"arch": base.arch})))
    entries = {e.label: e for e in load_profile(path, arch=base.arch)}
    assert set(entries) == {"5", "linear", "head2toe", f"lora (1-{n})"}
    h2t = entries["head2toe"]
    assert h2t.taps[0] == tuple(prof.baselines["head2toe"]["runs"][0]["method"]["taps_kept"])
    assert h2t.accuracy == prof.baselines["head2toe"]["accuracy"] and entries["linear"].taps == (None, None, None)
    assert baseline_names(True) == ["linear", "full"] and baseline_names(False) == []
    with pytest.raises(SubtuneError, match="expected a comma list of linear, head2toe, lora, full"):
        baseline_names("linear,surgical")
