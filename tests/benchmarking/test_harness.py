from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from subtune.benchmarking.harness import NOISY_SPREAD, PAPER_PROTOCOL, Protocol, summarize, time_interleaved
from subtune.errors import SubtuneError


def test_summarize_statistics_match_their_definitions():
    samples = [[1.0, 2.0, 3.0], [2.0, 4.0, 9.0], [3.0, 3.0, 3.5]]
    t = summarize(samples, batch=4)
    assert t.repeat_medians_ms == [2.0, 4.0, 3.0]
    assert t.median_ms == 3.0  # median of the per-repeat medians
    assert t.mean_ms == pytest.approx(3.0)  # their mean: the paper's statistic
    pooled = [x for r in samples for x in r]
    assert t.p90_ms == pytest.approx(np.percentile(pooled, 90))
    assert t.p99_ms == pytest.approx(np.percentile(pooled, 99))
    assert t.min_ms == 1.0
    assert t.spread == pytest.approx((4.0 - 2.0) / 3.0)
    assert t.throughput == pytest.approx(4 / 3e-3)
    assert t.noisy and t.samples_ms is None


def test_a_steady_run_is_not_noisy_and_keeps_samples_on_request():
    samples = [[10.0, 10.1], [10.05, 10.0]]
    t = summarize(samples, batch=1, keep_samples=True)
    assert t.spread < NOISY_SPREAD and not t.noisy
    assert t.samples_ms == samples


def test_paper_protocol_is_appendix_a():
    assert (PAPER_PROTOCOL.warmup, PAPER_PROTOCOL.iters, PAPER_PROTOCOL.repeats) == (300, 300, 10)


@pytest.mark.parametrize("kwargs", [{"iters": 0}, {"repeats": 0}, {"warmup": -1}])
def test_bad_protocol_is_a_user_error(kwargs):
    with pytest.raises(SubtuneError, match="timing protocol"):
        Protocol(**kwargs)


def test_interleaving_warms_up_first_then_rotates_the_order_every_repeat():
    log: list[str] = []
    calls = {name: (lambda name=name: log.append(name)) for name in "abc"}
    protocol = Protocol(warmup=2, iters=3, repeats=3)
    timings = time_interleaved(calls, batch=1, protocol=protocol)

    assert log[:6] == list("aabbcc")
    blocks = [log[i] for i in range(6, len(log), protocol.iters)]  # first call of each timed block
    assert blocks == list("abc") + list("bca") + list("cab")
    assert all(log.count(n) == protocol.warmup + protocol.iters * protocol.repeats for n in "abc")
    assert set(timings) == set("abc")
    assert all(len(t.repeat_medians_ms) == protocol.repeats for t in timings.values())


def test_timings_measure_the_call():
    timings = time_interleaved({"sleep": lambda: time.sleep(0.002), "noop": lambda: None},
                               batch=2, protocol=Protocol(warmup=0, iters=5, repeats=2))
    assert timings["sleep"].min_ms >= 2.0
    assert timings["noop"].median_ms < timings["sleep"].median_ms
    assert timings["sleep"].throughput == pytest.approx(2 / (timings["sleep"].median_ms / 1e3))
    assert statistics.median(timings["sleep"].repeat_medians_ms) == timings["sleep"].median_ms


def test_nothing_to_time_is_an_error():
    with pytest.raises(SubtuneError, match="nothing to time"):
        time_interleaved({}, batch=1, protocol=Protocol())
