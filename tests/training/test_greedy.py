"""The greedy selection policy, driven by made-up validation scores (no training)."""

from __future__ import annotations

import json

from subtune.training.greedy import greedy_select

SINGLE = {1: 0.50, 2: 0.60, 3: 0.70, 4: 0.65, 5: 0.55}


def score_from(table):
    calls = []

    def score(blocks):
        calls.append(tuple(blocks))
        return table(blocks)

    return score, calls


def additive(blocks):  # more blocks help a little, best single block dominates
    return max(SINGLE[b] for b in blocks) + 0.02 * (len(blocks) - 1)


def test_picks_best_block_then_grows_consecutively_until_max():
    score, calls = score_from(additive)
    path = greedy_select(score, 5, epsilon=0.01, max_blocks=3, start_score=0.6)
    assert calls[:5] == [(1,), (2,), (3,), (4,), (5,)]
    assert [s.chosen for s in path.steps] == [[3], [3, 4], [3, 4, 5]]  # ties: the deeper extension
    assert all(len(c) == len(s.chosen) for s in path.steps for c, _ in s.candidates)
    assert path.selected == [3, 4, 5] and abs(path.score - 0.74) < 1e-9 and path.beats_start
    json.dumps(path.to_json(), allow_nan=False)


def test_stops_when_gain_below_epsilon():
    path = greedy_select(score_from(additive)[0], 5, epsilon=0.05, max_blocks=4, start_score=0.6)
    assert path.selected == [3] and len(path.steps) == 2 and not path.steps[-1].accepted
    assert "stop" in path.describe()[-2]


def test_first_block_kept_even_when_linear_probe_is_better():
    path = greedy_select(score_from(additive)[0], 5, epsilon=0.01, max_blocks=1, start_score=0.9)
    assert path.selected == [3] and not path.beats_start
    assert "does not beat the linear probe" in "\n".join(path.describe())


def test_edges_and_no_start_score():
    path = greedy_select(lambda b: 1.0 if b == [1] else 0.5 + 0.1 * len(b), 3, epsilon=0.0, max_blocks=3)
    assert path.steps[0].gain is None and path.selected[0] == 1
    assert all(c[0] >= 1 and c[-1] <= 3 for s in path.steps for c, _ in s.candidates)
    json.dumps(path.to_json(), allow_nan=False)
