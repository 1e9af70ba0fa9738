"""The request mixes the task-select graph (e) is timed under (variants.mix_mask)."""

import numpy as np
import pytest

from subtune.benchmarking.variants import MIXES, mix_mask
from subtune.errors import SubtuneError


@pytest.mark.parametrize("batch,k", [(1, 1), (8, 4), (8, 16)])
def test_each_mix_asks_what_it_says(batch, k):
    masks = {mix: mix_mask(mix, batch, k) for mix in MIXES}
    assert all(m.shape == (batch, k) and m.dtype == bool for m in masks.values())
    assert masks["all"].all() and not masks["none"].any()
    assert (masks["one-random"].sum(axis=1) == 1).all()
    assert (masks["one-fixed"].sum(axis=1) == 1).all() and masks["one-fixed"][:, 0].all()
    assert np.array_equal(mix_mask("one-random", batch, k), masks["one-random"])  # the same every run


def test_one_random_task_spreads_over_the_tasks():
    chosen = mix_mask("one-random", 64, 16).argmax(axis=1)
    assert len(set(chosen.tolist())) > 8


def test_an_unknown_mix_is_refused():
    with pytest.raises(SubtuneError, match="unknown request mix 'most'"):
        mix_mask("most", 2, 2)
