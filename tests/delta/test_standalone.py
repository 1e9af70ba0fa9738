"""A task as its own full model (subtune.delta.standalone), checked against the base model's own
forward with the task's weights loaded into it: the deployment of a fully finetuned model."""

from __future__ import annotations

import copy

import pytest
import torch

from subtune.delta.standalone import TapTaskNet, TaskNet, run_base, task_net
from subtune.delta import make_tap_task
from subtune.models import make_base
from subtune.synthetic import synthetic_task

SIZE = 32
BATCHES = (1, 3)
TOL = 1e-5


@pytest.fixture(scope="module")
def base():
    return make_base("subtune:tiny_resnet", seed=0)  # 8 blocks


@pytest.fixture(scope="module")
def task(base):
    return synthetic_task(base, "t", [3, 4, 5], seed=3, num_classes=6)


def _images(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))


def _finetuned_model(base, task) -> torch.nn.Module:
    """A fresh base model with the task's block weights loaded in place and its classifier
    replaced by the task's head, run by the model's own forward."""
    model, bb = base.build()
    for b in task.blocks:
        bb.blocks[b - 1].load_state_dict(task.block_state[str(b)])
    head = torch.nn.Linear(*reversed(task.head["weight"].shape))
    head.load_state_dict(task.head)
    name = next(n for n, m in model.named_modules() if m is bb.classifier)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, head)
    return model.eval()


@torch.no_grad()
@pytest.mark.parametrize("batch", BATCHES)
def test_task_net_is_the_finetuned_model(base, task, batch):
    _, bb = base.build()
    net = task_net(bb, task, hold_base=True)
    x = _images(batch)
    want = _finetuned_model(base, task)(x)
    got = net(x)
    assert got.shape == (batch, 6)
    assert (got - want).abs().max().item() <= TOL * max(1.0, want.abs().max().item())
    # the base is untouched: its own output is the base model's
    model, _ = base.build()
    assert torch.equal(bb.model.eval()(x), model.eval()(x))


@torch.no_grad()
def test_entry_and_forward_from_give_the_full_output(base, task):
    """A remainder fed the prefix's output (the bench's split variant), and the training path
    from activations cached at the cut, equal the full model."""
    _, bb = base.build()
    bb.model.eval()
    full = TaskNet.from_task(bb, task)
    x = _images(3)
    want = full(x)
    for entry in (1, 2, 3):
        rest = TaskNet.from_task(bb, task, entry=entry, hold_base=True)
        assert torch.equal(rest(run_base(bb, x, 0, entry)), want)
    assert torch.equal(full.forward_from(run_base(bb, x, 0, full.cut)), want)
    with pytest.raises(ValueError, match="after the task's cut"):
        TaskNet.from_task(bb, task, entry=4)


def test_hold_base_registers_exactly_the_weights_it_runs(base, task):
    _, bb = base.build()
    held = TaskNet.from_task(bb, task, hold_base=True)
    ran = [bb.stem, bb.blocks[0], bb.blocks[1], bb.blocks[5], bb.blocks[6], bb.blocks[7], bb.neck]
    want = {id(p) for m in ran for p in m.parameters()} | {id(p) for p in held.tuned.parameters()} \
        | {id(p) for p in held.head.parameters()}
    assert {id(p) for p in held.parameters()} == want  # not the classifier, not blocks 3-5 of the base
    bare = TaskNet.from_task(bb, task)
    assert {id(p) for p in bare.parameters()} == {id(p) for p in [*bare.tuned.parameters(), *bare.head.parameters()]}
    # .to() moves what runs: the double-precision model gives the same answer
    x = _images(2)
    with torch.no_grad():
        want_out = held(x)
        held64 = copy.deepcopy(held).double()
        got = held64(x.double())
    assert got.dtype == torch.float64
    assert (got.float() - want_out).abs().max().item() <= 1e-4


@torch.no_grad()
def test_siamese_head_reads_base_and_task_features(base):
    """Siamese (paper §5.1): the head reads [the base's features, the task's features], each
    taken at the classifier's input of the model that computes it."""
    siamese = synthetic_task(base, "s", [6, 7], seed=4, num_classes=5, siamese=True)
    plain = synthetic_task(base, "s", [6, 7], seed=4, num_classes=5)  # the same seed: the same blocks
    assert all(torch.equal(siamese.block_state["6"][k], v) for k, v in plain.block_state["6"].items())
    model, bb = base.build()
    x = _images(3)
    base_features = _classifier_input(model.eval(), bb.classifier, x)
    ft = _finetuned_model(base, plain)
    task_features = _classifier_input(ft, _classifier(ft, base), x)
    head = torch.nn.Linear(*reversed(siamese.head["weight"].shape))
    head.load_state_dict(siamese.head)
    want = head(torch.cat([base_features, task_features], dim=1))
    _, bb2 = base.build()
    got = task_net(bb2, siamese, hold_base=True)(x)
    assert (got - want).abs().max().item() <= TOL * max(1.0, want.abs().max().item())


@torch.no_grad()
@pytest.mark.parametrize("batch", BATCHES)
def test_linear_probe_is_the_head_on_the_base_features(base, batch):
    """A tap task with one tap at the features (the linear probe) is its head on what the base's
    classifier reads; with a selection, on the selected columns."""
    model, bb = base.build()
    n = bb.num_blocks
    head = torch.nn.Linear(bb.feature_dim, 4)
    probe = make_tap_task(base, "probe", [{"point": n + 2, "grid": None, "dim": bb.feature_dim}], head)
    select = torch.tensor([0, 5, 9, 17])
    small = torch.nn.Linear(len(select), 3)
    picked = make_tap_task(base, "picked", [{"point": n + 2, "grid": None, "dim": bb.feature_dim}], small, select=select)
    x = _images(batch)
    features = _classifier_input(model.eval(), bb.classifier, x)
    for task, lin, cols in ((probe, head, None), (picked, small, select)):
        net = task_net(bb, task, hold_base=True)
        assert isinstance(net, TapTaskNet) and net.cut == 0
        want = lin(features if cols is None else features[:, cols])
        assert (net(x) - want).abs().max().item() <= TOL * max(1.0, want.abs().max().item())


def _classifier(model, base):
    """The module at the classifier's place in `model` (a model built like `base`'s)."""
    _, bb = base.build()
    name = next(n for n, m in bb.model.named_modules() if m is bb.classifier)
    return model.get_submodule(name)


def _classifier_input(model, classifier, x) -> torch.Tensor:
    seen = {}
    hook = classifier.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    try:
        model(x)
    finally:
        hook.remove()
    return seen["x"]
