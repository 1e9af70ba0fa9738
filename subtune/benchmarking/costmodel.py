"""The paper's compute/IO cost model (§3.1), generalised from one task to a plan of k tasks.

Per layer i (0 = the stem, 1..N the blocks): c_i, the time to compute it (its FLOPs at the
input resolution times the batch, over the machine's compute rate) and s_i, the time to read
its weights (its weight bytes over the memory bandwidth). Compute and weight loading overlap:
while layer i computes, the weights of layer i+1 stream in. For one task tuned on blocks
l_start..l_end the paper writes the backbone's time as

    max(2 s_{l_start}, c_{l_start-1}) + sum_{i=l_start}^{l_end} 2 max(c_i, s_{i+1})
        + sum_{i=l_end+1}^{N-1} max(2 c_i, s_{i+1}) + 2 c_N

and the layers before l_start - 1 cost what they cost the base alone. The same accounting for
any number of tasks, following the compiled schedule (fork, run, merge by batch concatenation):
at each layer i there is one *execution* for the shared stream, carrying the base plus every
task already merged back (batch multiplicity b), and one per task whose window covers i. Each
execution costs max(b * c_i, weights it loads for layer i+1), where the shared execution loads
the base's layer i+1 plus that of each task forking at i+1, and a task execution loads one
layer's worth (its own, or the shared one it merges into). The last layer costs b * c_N per
execution. With one task this is exactly the formula above; `added_time` is its difference
from the base alone.

Rates: the bandwidth comes from a memory-copy probe; the compute rate is the one that makes
the model reproduce the base model's own measured latency. Everything the model leaves out
(the neck and heads, runtime overheads, caches) is folded into that rate, so this is the
paper's crude estimate, and its error against the measurement is reported next to it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from torch import nn

    from subtune.models import Backbone

Window = tuple[int, int]  # (first, last) block, 1-based and inclusive


@dataclass(frozen=True)
class LayerCost:
    index: int  # 0: the stem; 1..N: blocks
    name: str
    flops: int  # per image at the input resolution (FlopCounterMode: 2 per multiply-add)
    weight_bytes: int  # parameters and floating-point buffers, as stored (the stem's: see layer_costs)


def layer_costs(backbone: "Backbone", input_size: tuple[int, int]) -> list[LayerCost]:
    """FLOPs per image and weight bytes of the stem and of every block, counted by running one
    image through them under torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    names = ["stem"] + (backbone.block_names or [f"block{i}" for i in range(1, backbone.num_blocks + 1)])
    # The stem's weights: everything outside the blocks and the classifier (so the neck's too). Some
    # stems hold the whole model as a submodule (ViT's), so its own module tree would count it all.
    outside = _weights(backbone.model)
    for part in (*backbone.blocks, backbone.classifier):
        outside = {k: t for k, t in outside.items() if k not in _weights(part)}
    sizes = [_nbytes(outside.values())] + [weight_bytes(b) for b in backbone.blocks]
    costs = []
    x = torch.zeros(1, 3, *input_size)
    with torch.inference_mode():
        for i, module in enumerate([backbone.stem, *backbone.blocks]):
            counter = FlopCounterMode(display=False)
            with counter:
                x = module(x)
            costs.append(LayerCost(i, names[i], int(counter.get_total_flops()), sizes[i]))
    return costs


def weight_bytes(module: "nn.Module") -> int:
    """Parameters and floating-point buffers (BatchNorm statistics), each tensor counted once."""
    return _nbytes(_weights(module).values())


def _weights(module: "nn.Module") -> dict[int, object]:
    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    return {id(t): t for t in tensors}


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def pipelined_time(compute: Sequence[float], load: Sequence[float], windows: Sequence[Window] = ()) -> float:
    """The model's time for the layers 0..N (see the module docstring) with tasks on `windows`."""
    n = len(compute) - 1
    total = 0.0
    for i in range(n + 1):
        next_load = load[i + 1] if i < n else 0.0
        merged = sum(1 for _, last in windows if last < i)
        forking_next = sum(1 for first, _ in windows if first == i + 1)
        total += max((1 + merged) * compute[i], (1 + forking_next) * next_load)  # the shared stream
        running = sum(1 for first, last in windows if first <= i <= last)
        total += running * max(compute[i], next_load)  # each task's own stream
    return total


def added_time(compute: Sequence[float], load: Sequence[float], windows: Sequence[Window]) -> float:
    return pipelined_time(compute, load, windows) - pipelined_time(compute, load)


def calibrate_compute_rate(flops: Sequence[float], weight_bytes_: Sequence[float], bandwidth: float,
                           measured_base_s: float) -> float:
    """The compute rate (FLOP/s) at which the model's base-alone time equals the measurement;
    infinity when weight loading alone already takes that long."""
    load = [b / bandwidth for b in weight_bytes_]

    def model_time(rate: float) -> float:
        return pipelined_time([f / rate for f in flops], load)

    if model_time(math.inf) >= measured_base_s:
        return math.inf
    lo, hi = 1e3, 1e18  # FLOP/s; model_time falls as the rate rises
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if model_time(mid) > measured_base_s else (lo, mid)
    return math.sqrt(lo * hi)


def measure_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Memory bandwidth (bytes/s) from copying a buffer far larger than the caches: bytes read
    plus bytes written, over the median copy time."""
    import numpy as np

    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / sorted(times)[len(times) // 2]


@dataclass
class CostPrediction:
    """The model's added latency for a plan against the measured one, at one batch size."""

    batch: int
    windows: list[Window]
    predicted_added_ms: float
    measured_added_ms: float
    base_ms: float
    compute_rate_gflops: float  # calibrated; inf when the base is IO-bound in the model
    bandwidth_gbs: float
    predicted_flops_ratio: float  # plan FLOPs over base FLOPs (backbone only)

    @property
    def error_ms(self) -> float:
        return self.predicted_added_ms - self.measured_added_ms

    @property
    def relative_error(self) -> float:
        """Error relative to the measured added latency (nan when nothing was added)."""
        return self.error_ms / self.measured_added_ms if self.measured_added_ms else math.nan


def predict(costs: Sequence[LayerCost], windows: Sequence[Window], *, batch: int, base_ms: float,
            measured_added_ms: float, bandwidth: float) -> CostPrediction:
    flops = [c.flops * batch for c in costs]
    load_bytes = [c.weight_bytes for c in costs]
    rate = calibrate_compute_rate(flops, load_bytes, bandwidth, base_ms / 1e3)
    added_s = added_time([f / rate for f in flops], [b / bandwidth for b in load_bytes], windows)
    extra_flops = sum(c.flops for first, _ in windows for c in costs if c.index >= first)
    return CostPrediction(batch, [tuple(w) for w in windows], added_s * 1e3, measured_added_ms, base_ms,
                          rate / 1e9, bandwidth / 1e9, 1 + extra_flops / max(1, sum(c.flops for c in costs)))
