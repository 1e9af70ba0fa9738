"""The file contract: plain dicts, weights_only loading, fingerprints, strict validation."""

import pickle

import pytest
import torch

from subtune.errors import SubtuneError
from subtune.delta import validate_task
from subtune.formats import BASE_FORMAT, TASK_FORMAT, load_base, load_task, save_base, save_task
from subtune.models import fingerprint
from subtune.synthetic import synthetic_task


def test_base_round_trip_is_a_plain_dict(tmp_path, resnet18_base):
    save_base(tmp_path / "b.pt", resnet18_base)
    raw = torch.load(tmp_path / "b.pt", weights_only=True)
    assert raw["format"] == BASE_FORMAT and set(raw) == {"format", "arch", "arch_kwargs", "state_dict", "fingerprint"}
    back = load_base(tmp_path / "b.pt")
    assert back.fingerprint == resnet18_base.fingerprint == fingerprint(raw["state_dict"])
    assert "layer1.0.conv1.weight" in raw["state_dict"]  # the architecture's own names


def test_fingerprint_sees_every_byte(resnet18_base):
    sd = dict(resnet18_base.state_dict)
    w = sd["fc.bias"].clone()
    w[0] += 1e-7
    sd["fc.bias"] = w
    assert fingerprint(sd) != resnet18_base.fingerprint


def test_task_round_trip(tmp_path, resnet18_base):
    task = synthetic_task(resnet18_base, "t", [3, 4], seed=1)
    save_task(tmp_path / "t.pt", task)
    raw = torch.load(tmp_path / "t.pt", weights_only=True)
    assert raw["format"] == TASK_FORMAT and raw["blocks"] == [3, 4] and set(raw["block_state"]) == {"3", "4"}
    assert "conv1.weight" in raw["block_state"]["3"]  # the block module's own state_dict
    assert raw["head"]["weight"].shape == (10, 512)
    back = load_task(tmp_path / "t.pt")
    assert torch.equal(back.block_state["4"]["bn2.bias"], task.block_state["4"]["bn2.bias"])


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/subtune-pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": TASK_FORMAT, "x": _Evil()}))
    with pytest.raises(SubtuneError, match="task file"):
        load_task(path)
    torch.save({"format": TASK_FORMAT, "module": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")
    with pytest.raises(SubtuneError, match="pickled Python objects"):
        load_task(tmp_path / "module.pt")


def test_truncated_missing_and_foreign_files(tmp_path, resnet18_base):
    save_base(tmp_path / "b.pt", resnet18_base)
    data = (tmp_path / "b.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SubtuneError, match="trunc.pt"):
        load_base(tmp_path / "trunc.pt")
    with pytest.raises(SubtuneError, match="not found"):
        load_base(tmp_path / "nope.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "sd.pt")
    with pytest.raises(SubtuneError, match="expected a base file"):
        load_base(tmp_path / "sd.pt")
    with pytest.raises(SubtuneError, match="this is a base file"):
        load_task(tmp_path / "b.pt")


@pytest.mark.parametrize("mutate,message", [
    (lambda t: setattr(t, "base_fingerprint", "0" * 64), "another base"),
    (lambda t: setattr(t, "blocks", [8, 9]), "out of range"),
    (lambda t: setattr(t, "blocks", [3, 5]), "not consecutive"),
    (lambda t: t.block_state["3"].pop("conv1.weight"), "does not fit the block"),
    (lambda t: t.block_state["3"].__setitem__("conv1.weight", torch.zeros(64, 64, 1, 1)), "has shape"),
    (lambda t: t.head.__setitem__("weight", torch.zeros(10, 100)), "head takes 100 inputs"),
    (lambda t: setattr(t, "name", "base"), "not usable as an output name"),
    (lambda t: setattr(t, "name", "has space"), "not usable as an output name"),
])
def test_validation_names_the_problem(resnet18_base, mutate, message):
    task = synthetic_task(resnet18_base, "t", [3, 4], seed=1)
    mutate(task)
    with pytest.raises(SubtuneError, match=message):
        validate_task(task, resnet18_base)


def test_siamese_head_sees_both_feature_sets(resnet18_base):
    task = synthetic_task(resnet18_base, "s", [8], siamese=True)
    assert task.head["weight"].shape[1] == 2 * 512
