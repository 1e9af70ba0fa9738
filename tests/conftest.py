"""Shared fixtures: small real models built in code with fixed seeds (no downloads)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def resnet18_base():
    from subtune.models import make_base

    return make_base("torchvision:resnet18", {"num_classes": 7}, seed=0)


@pytest.fixture(scope="session")
def resnet18_files(tmp_path_factory, resnet18_base):
    """base.pt and four task files on disk: overlapping, disjoint, ending at the last block, Siamese."""
    from subtune.formats import save_base, save_task
    from subtune.synthetic import synthetic_task

    d = tmp_path_factory.mktemp("resnet18")
    base = resnet18_base
    _, bb = base.build()
    save_base(d / "base.pt", base)
    specs = {"early": [2, 3], "overlap": [3, 4, 5], "last": [7, 8], "siam": [5, 6]}
    for seed, (name, blocks) in enumerate(specs.items(), start=1):
        task = synthetic_task(base, name, blocks, seed=seed, siamese=name == "siam", backbone=bb)
        save_task(d / f"{name}.pt", task)
    return d
