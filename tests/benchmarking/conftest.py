from __future__ import annotations

import pytest

from subtune.models import make_base
from subtune.synthetic import synthetic_task


@pytest.fixture(scope="session")
def tiny_base():
    return make_base("subtune:tiny_resnet", seed=0)  # 8 BasicBlocks, widths 8-64


@pytest.fixture(scope="session")
def tiny_tasks(tiny_base):
    """Two tasks on overlapping windows, so forks, merges and the split's single prefix all matter."""
    _, backbone = tiny_base.build()
    return [synthetic_task(tiny_base, "t1", [2, 3], seed=1, backbone=backbone),
            synthetic_task(tiny_base, "t2", [3, 4], seed=2, backbone=backbone)]


@pytest.fixture
def quick():
    from subtune.benchmarking.harness import Protocol

    return Protocol(warmup=1, iters=3, repeats=2)
