from __future__ import annotations

import json

import pytest

from subtune.benchmarking.compare import run_compare
from subtune.benchmarking.plots import plot_compare
from subtune.benchmarking.report import compare_table, to_jsonable
from subtune.benchmarking.variants import RuntimeSpec
from subtune.errors import SubtuneError


@pytest.fixture(scope="module")
def result(tiny_base, tiny_tasks):
    from subtune.benchmarking.harness import Protocol

    return run_compare(tiny_base, tiny_tasks, batches=[1, 2], protocol=Protocol(warmup=1, iters=3, repeats=2),
                       runtime=RuntimeSpec("torch"), task_counts=[1, 2], threads=1, show_progress=False)


def test_rows_cover_every_variant_count_and_batch(result):
    keys = {(r.key, r.batch) for r in result.rows}
    expected = {"base"} | {f"{kind}/k={k}" for kind in ("naive", "split", "compiled") for k in (1, 2)}
    assert keys == {(k, b) for k in expected for b in (1, 2)}
    for r in result.rows:
        base = result.row("base", r.batch)
        assert r.ratio_to_base == pytest.approx(r.timing.median_ms / base.timing.median_ms)
        assert r.added_ms == pytest.approx(r.timing.median_ms - base.timing.median_ms)
        if r.tasks:
            assert r.added_ms_per_task == pytest.approx(r.added_ms / r.tasks)
    assert result.row("base", 1).ratio_to_base == 1.0
    assert max(result.agreement.values()) < 1e-4


def test_cost_model_predicts_each_compiled_row(result):
    compiled = [r for r in result.rows if r.kind == "compiled"]
    assert [(p.batch, len(p.windows)) for p in result.predictions] == [(r.batch, r.tasks) for r in compiled]
    for p, r in zip(result.predictions, compiled):
        assert p.measured_added_ms == r.added_ms
        assert p.predicted_added_ms > 0
        assert p.error_ms == pytest.approx(p.predicted_added_ms - p.measured_added_ms)
    assert [c.name for c in result.layers] == ["stem"] + [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]
    assert result.machine["threads"] == 1 and result.runtime["runtime"] == "torch"


def test_table_json_and_plot_agree(result, tmp_path):
    text = compare_table(result)
    for label in ("(a) base alone", "(b) naive", "(c) split", "(d) compiled", "cost model", "(d)/(b)"):
        assert label in text
    data = json.loads(json.dumps(to_jsonable(result), allow_nan=False))  # strict JSON: no NaN/Infinity
    assert data["rows"][0]["timing"]["median_ms"] == result.rows[0].timing.median_ms
    assert "noisy" in data["rows"][0]["timing"] and "error_ms" in data["predictions"][0]
    png = tmp_path / "compare.png"
    plot_compare(result, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_task_counts(tiny_base, tiny_tasks, quick):
    with pytest.raises(SubtuneError, match="must lie in 1..2"):
        run_compare(tiny_base, tiny_tasks, batches=[1], protocol=quick, runtime=RuntimeSpec("torch"), task_counts=[3])
    with pytest.raises(SubtuneError, match="at least one task"):
        run_compare(tiny_base, [], batches=[1], protocol=quick, runtime=RuntimeSpec("torch"))
