from __future__ import annotations

import json

import pytest

from subtune.benchmarking.harness import summarize
from subtune.benchmarking.plots import plot_tradeoff
from subtune.benchmarking.report import to_jsonable, tradeoff_table
from subtune.benchmarking.tradeoff import (WindowPoint, best_within, load_profile, measure_tradeoff, pareto_front,
                                    parse_profile)
from subtune.benchmarking.variants import RuntimeSpec
from subtune.errors import SubtuneError


def test_profile_as_a_list_or_under_entries_with_extra_keys(tmp_path):
    entries = [{"blocks": [3, 4], "accuracy": 0.9, "epochs": 5}, {"blocks": [4, 4], "accuracy": 0.8}]
    assert [(e.window, e.accuracy) for e in parse_profile(entries)] == [((3, 4), 0.9), ((4, 4), 0.8)]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"arch": "subtune:tiny_resnet", "entries": entries, "notes": "x"}))
    assert [e.label for e in load_profile(path, arch="subtune:tiny_resnet")] == ["3-4", "4"]
    with pytest.raises(SubtuneError, match="made for subtune:tiny_resnet, but the base is torchvision:resnet50"):
        load_profile(path, arch="torchvision:resnet50")


@pytest.mark.parametrize("data, message", [
    ([], "non-empty list"),
    ({"windows": []}, "non-empty list"),
    ([{"blocks": [3, 4]}], "entry 0"),
    ([{"blocks": [3], "accuracy": 1}], "entry 0"),
    ([{"blocks": [4, 3], "accuracy": 1}], "first <= last"),
])
def test_bad_profiles_say_what_is_expected(data, message):
    with pytest.raises(SubtuneError, match=message):
        parse_profile(data)


def test_unreadable_profile_files(tmp_path):
    with pytest.raises(SubtuneError, match="not found"):
        load_profile(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SubtuneError, match="not valid JSON"):
        load_profile(bad)


def _point(added, accuracy, first=1):
    t = summarize([[1.0]], batch=1)
    return WindowPoint(first, first, accuracy, added, t, t)


def test_pareto_front_keeps_only_undominated_points():
    a, b, c, d, e = _point(1, 0.80), _point(2, 0.85), _point(3, 0.83), _point(4, 0.90), _point(4, 0.88)
    assert pareto_front([d, c, b, a, e]) == [a, b, d]
    assert pareto_front([_point(1, 0.8), _point(1, 0.8)])[0].accuracy == 0.8


def test_budget_picks_the_most_accurate_window_that_fits():
    a, b, c = _point(1, 0.80), _point(2, 0.85), _point(2.5, 0.85)
    assert best_within([a, b, c], 2.0) is b
    assert best_within([a, b, c], 3.0) is b  # equal accuracy: the cheaper one
    assert best_within([a, b, c], 0.5) is None


def test_measure_tradeoff_times_each_window_once(tiny_base, quick, tmp_path):
    entries = parse_profile([{"blocks": [4, 4], "accuracy": 0.7}, {"blocks": [3, 4], "accuracy": 0.8},
                             {"blocks": [4, 4], "accuracy": 0.75}])  # a window twice: measured once
    result = measure_tradeoff(tiny_base, entries, batch=2, protocol=quick, runtime=RuntimeSpec("torch"), threads=1,
                              budget_ms=1e6, show_progress=False)
    assert [(p.label, p.accuracy) for p in result.points] == [("4", 0.7), ("3-4", 0.8), ("4", 0.75)]
    assert result.points[0].added_ms == result.points[2].added_ms
    for p in result.points:
        assert p.added_ms == pytest.approx(p.compiled.median_ms - p.base.median_ms)
    assert {id(p) for p in pareto_front(result.points)} == {id(p) for p in result.points if p.on_front}
    assert result.chosen is best_within(result.points, 1e6)
    assert "Pareto" in tradeoff_table(result)
    json.dumps(to_jsonable(result), allow_nan=False)
    png = tmp_path / "tradeoff.png"
    plot_tradeoff(result, png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_window_beyond_the_model_is_a_user_error(tiny_base, quick):
    with pytest.raises(SubtuneError, match="out of range"):
        measure_tradeoff(tiny_base, parse_profile([{"blocks": [8, 9], "accuracy": 1}]), batch=1, protocol=quick,
                         runtime=RuntimeSpec("torch"), show_progress=False)
