from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from subtune.benchmarking.costmodel import (added_time, calibrate_compute_rate, layer_costs, measure_bandwidth,
                                     pipelined_time, predict, weight_bytes)


def paper_formula(c, s, start, end):
    """§3.1 as printed, for one task on blocks start..end over layers 0..N (N = len(c) - 1),
    plus the layers before start - 1, which cost what they cost the base."""
    n = len(c) - 1
    before = sum(max(c[i], s[i + 1]) for i in range(start - 1))
    fork = max(2 * s[start], c[start - 1])
    tuned = sum(2 * max(c[i], s[i + 1]) for i in range(start, min(end, n - 1) + 1))
    merged = sum(max(2 * c[i], s[i + 1]) for i in range(end + 1, n))
    return before + fork + tuned + merged + 2 * c[n]


costs = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(min_value=2, max_value=12))
def test_one_task_reproduces_the_papers_formula(data, n):
    c = data.draw(st.lists(costs, min_size=n + 1, max_size=n + 1))
    s = data.draw(st.lists(costs, min_size=n + 1, max_size=n + 1))
    start = data.draw(st.integers(min_value=1, max_value=n))
    end = data.draw(st.integers(min_value=start, max_value=n))
    assert pipelined_time(c, s, [(start, end)]) == pytest.approx(paper_formula(c, s, start, end))


@given(st.lists(costs, min_size=3, max_size=10), st.lists(costs, min_size=3, max_size=10))
def test_no_tasks_add_nothing(c, s):
    n = min(len(c), len(s))
    assert added_time(c[:n], s[:n], []) == 0


def test_compute_bound_tasks_add_the_flops_from_their_first_block_on():
    c = [1.0, 2.0, 3.0, 4.0, 5.0]  # stem, blocks 1..4
    s = [0.0] * 5
    assert added_time(c, s, [(2, 3)]) == pytest.approx(3 + 4 + 5)
    assert added_time(c, s, [(2, 3), (4, 4)]) == pytest.approx(3 + 4 + 5 + 5)


def test_io_bound_tasks_add_their_weight_loads():
    c = [0.0] * 5
    s = [0.0, 1.0, 10.0, 100.0, 1000.0]
    # tuned blocks 2-3 are loaded twice, and (the paper's accounting) block 4 once more by the forked stream
    assert added_time(c, s, [(2, 3)]) == pytest.approx(10 + 100 + 1000)
    assert added_time(c, s, [(4, 4)]) == pytest.approx(1000)


def test_calibration_reproduces_the_base_latency():
    flops, nbytes, bandwidth = [4e8, 8e8, 8e8, 6e8], [1e5, 4e6, 8e6, 16e6], 10e9
    rate = calibrate_compute_rate(flops, nbytes, bandwidth, measured_base_s=0.05)
    modeled = pipelined_time([f / rate for f in flops], [b / bandwidth for b in nbytes])
    assert modeled == pytest.approx(0.05, rel=1e-6)


def test_calibration_says_io_bound_when_loading_alone_takes_longer():
    assert calibrate_compute_rate([1e6, 1e6], [1e9, 1e9], 1e9, measured_base_s=0.5) == math.inf


def test_prediction_reports_its_error_against_the_measurement():
    from subtune.benchmarking.costmodel import LayerCost

    layers = [LayerCost(0, "stem", 100, 0), LayerCost(1, "b1", 100, 0), LayerCost(2, "b2", 200, 0)]
    p = predict(layers, [(2, 2)], batch=1, base_ms=4.0, measured_added_ms=2.0, bandwidth=1e9)
    # weights are free here, so the added cost is block 2's share of the base: 200 / 400 of 4 ms
    assert p.predicted_added_ms == pytest.approx(2.0)
    assert p.error_ms == pytest.approx(0.0, abs=1e-9)
    assert p.predicted_flops_ratio == pytest.approx(1.5)


def test_layer_costs_count_conv_flops_and_weight_bytes(tiny_base):
    _, backbone = tiny_base.build()
    layers = layer_costs(backbone, (16, 16))
    assert [c.name for c in layers] == ["stem"] + [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]
    # block 1: two 3x3 convs, 8 -> 8 channels at 16x16; FLOPs = 2 per multiply-add (plus BN/ReLU/add: none counted)
    assert layers[1].flops == 2 * 2 * (16 * 16 * 8 * 8 * 9)
    conv_params, bn_tensors = 2 * 8 * 8 * 9, 2 * 4 * 8  # BN: weight, bias, running mean, running var
    assert layers[1].weight_bytes == 4 * (conv_params + bn_tensors)
    assert weight_bytes(backbone.blocks[0]) == layers[1].weight_bytes


def test_layer_bytes_add_up_to_the_model(tiny_base):
    model, backbone = tiny_base.build()
    layers = layer_costs(backbone, (16, 16))
    assert sum(c.weight_bytes for c in layers) + weight_bytes(backbone.classifier) == weight_bytes(model)


def test_bandwidth_probe_returns_a_rate():
    assert measure_bandwidth(nbytes=8 << 20, repeats=3) > 1e8  # any machine copies faster than 100 MB/s
