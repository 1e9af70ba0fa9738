"""Foreign weights mapped by position (models/adapter.py): logged, and refused where the shapes
of one module's tensors cannot tell them apart and the names do not either."""

from __future__ import annotations

import logging

import pytest
import torch

from subtune.errors import SubtuneError
from subtune.models import build_model


def _foreign(own: dict, rename) -> dict:
    return {rename(i, k): v.clone() for i, (k, v) in enumerate(own.items())}


def test_other_names_in_the_same_order_map_with_a_warning(caplog):
    from subtune.models import make_base

    model, _ = build_model("subtune:tiny_resnet")
    own = model.state_dict()
    ported = _foreign(own, lambda i, k: f"net/{i}/{k.rsplit('.', 1)[-1]}")  # other module names, same roles
    with caplog.at_level(logging.WARNING, logger="subtune"):
        base = make_base("subtune:tiny_resnet", weights=ported)
    assert all(torch.equal(base.state_dict[k], own[k]) for k in own)
    assert any("mapped to TinyResNet by position" in r.getMessage() for r in caplog.records)


def test_keras_names_are_understood():
    from subtune.models import make_base

    model, _ = build_model("subtune:tiny_resnet")
    own = model.state_dict()
    keras = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    ported = _foreign(own, lambda i, k: f"m{i}/" + (keras.get(k.rsplit('.', 1)[-1], k.rsplit('.', 1)[-1])
                                                    if ".bn" in f".{k}" else k.rsplit('.', 1)[-1]))
    base = make_base("subtune:tiny_resnet", weights=ported)
    assert all(torch.equal(base.state_dict[k], own[k]) for k in own)


def test_batchnorm_tensors_in_another_order_are_refused():
    """running_mean stored before weight: the shapes agree position by position, the names don't."""
    from subtune.models import make_base

    model, _ = build_model("subtune:tiny_resnet")
    own = list(model.state_dict().items())
    swapped = dict(own)
    keys = [k for k, _ in own]
    i, j = keys.index("bn1.weight"), keys.index("bn1.running_mean")
    keys[i], keys[j] = keys[j], keys[i]  # the foreign file lists bn1's tensors in another order
    foreign = {f"x.{k}": swapped[k] for k in keys}
    with pytest.raises(SubtuneError, match="ambiguous: 'x.bn1.running_mean' would become 'bn1.weight'"):
        make_base("subtune:tiny_resnet", weights=foreign)


def test_names_without_roles_are_refused():
    from subtune.models import make_base

    model, _ = build_model("subtune:tiny_resnet")
    with pytest.raises(SubtuneError, match="names do not say which is which"):
        make_base("subtune:tiny_resnet", weights=_foreign(model.state_dict(), lambda i, k: f"w{i}"))
