"""The runs folder and resuming a profile, without Ray: the serial executor resumes the same way."""

from __future__ import annotations

import json

import pytest
import torch

from subtune.sweeps import RunLog
from subtune.errors import SubtuneError
from subtune.training.profile import RunSpec, run_profile


def test_runlog_keeps_runs_of_its_own_settings_only(tmp_path):
    folder = tmp_path / "p.runs"
    log = RunLog(folder, {"epochs": 3})
    assert log.load() == {} and not folder.exists()  # nothing is created before the first result
    spec = RunSpec("subtune", (3, 4), seed=1)
    log.save(spec, {"val_accuracy": 0.5})
    (folder / "junk.json").write_text("{not json")  # e.g. written by hand: ignored, not fatal
    assert log.load() == {"subtune_3-4_seed1": {"val_accuracy": 0.5}}
    other = RunLog(folder, {"epochs": 4})
    assert other.load() == {} and other.stale == 1
    assert json.loads((folder / "subtune_3-4_seed1.json").read_text())["spec"]["blocks"] == [3, 4]
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temporary file


def test_runlog_refuses_a_file_or_an_unwritable_place(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(SubtuneError, match="is a file"):
        RunLog(tmp_path / "f", {})
    with pytest.raises(SubtuneError, match="not a writable folder"):
        RunLog(tmp_path / "missing" / "runs", {})


def test_run_keys_name_every_setting_that_changes_a_run():
    keys = {RunSpec("subtune", (1,), 0).key, RunSpec("subtune", (1,), 1).key, RunSpec("subtune", (1, 2), 0).key,
            RunSpec("subtune", (1,), 0, siamese=True).key, RunSpec("subtune", (1,), 0, test=False).key,
            RunSpec("linear", (), 0).key, RunSpec("full", (), 0).key}
    assert len(keys) == 7


@pytest.fixture(scope="module")
def trainer():
    from subtune.models import make_base
    from subtune.training.data import ImageDataset
    from subtune.training.trainer import TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)

    def split(n):
        labels = torch.arange(n) % 3
        pixels = (torch.rand(n, 3, 16, 16, generator=g) * 80 + labels.view(-1, 1, 1, 1) * 60).to(torch.uint8)
        return ImageDataset(pixels, labels, ["a", "b", "c"], (16, 16), (0.5,) * 3, (0.25,) * 3, name="colours")

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; restored afterwards
    yield Trainer(make_base("subtune:tiny_resnet", seed=0), split(24), split(12),
                  config=TrainConfig(epochs=1, batch_size=8), log=lambda m: None)
    torch.set_num_threads(before)


def test_serial_profile_resumes_from_finished_runs(tmp_path, trainer):
    log = RunLog(tmp_path / "runs", {"t": 1})
    run_profile(trainer, starts=[7], seeds=[0, 1], on_run=log.save)  # the part that finished before
    ran = []
    prof = run_profile(trainer, starts=[7, 8], seeds=[0, 1], done=log.load(), on_run=lambda s, r: ran.append(s.key))
    assert ran == ["subtune_8_seed0", "subtune_8_seed1"] and prof.resumed == 2
    fresh = run_profile(trainer, starts=[7, 8], seeds=[0, 1])
    drop = ("seconds", "eval_seconds")
    assert [[{k: v for k, v in r.items() if k not in drop} for r in e["runs"]] for e in prof.entries] == \
           [[{k: v for k, v in r.items() if k not in drop} for r in e["runs"]] for e in fresh.entries]
