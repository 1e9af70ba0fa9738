"""The harness' own overhead, measured on a model that does nothing (one Identity node on a
tiny tensor): what a measurement of zero work reads, layer by layer.

    empty call      the harness timing a no-op callable: the clock and loop alone
    session.run     ONNX Runtime called directly on the trivial model
    runner.infer    the same through OnnxrtRunner (what `subtune-bench MODEL` times)
    variant.run     the same through a one-step Variant (what `--compare` times)
    torch eager     TorchRunner around nn.Identity

Differences between consecutive lines are the cost of each layer of wrapping; every latency
reported elsewhere includes the runner.infer (or variant.run) floor.
"""

from __future__ import annotations

from dataclasses import dataclass

from subtune.benchmarking.harness import Protocol, Timing, time_interleaved
from subtune.machine import machine_info

TRIVIAL_SHAPE = (1, 3, 8, 8)


@dataclass
class OverheadResult:
    machine: dict
    protocol: Protocol
    timings: dict[str, Timing]  # by the names in the module docstring

    def floor_ms(self, name: str) -> float:
        return self.timings[name].median_ms


def identity_onnx(shape: tuple[int, ...] = TRIVIAL_SHAPE) -> bytes:
    """A one-node ONNX model, images -> Identity -> out, with a dynamic batch axis."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", *shape[1:]])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", *shape[1:]])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "identity", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def measure_overhead(protocol: Protocol, *, threads: int = 1, show_progress: bool = True) -> OverheadResult:
    import numpy as np
    import torch

    from subtune.benchmarking.variants import Step, Variant
    from subtune.runtimes.onnxruntime import OnnxrtRunner, SessionFromOnnx
    from subtune.runtimes.pytorch import TorchRunner
    from subtune.runtimes.base import TensorSpec

    images = np.zeros(TRIVIAL_SHAPE, dtype=np.float32)
    feeds = {"images": images}
    spec = {"images": TensorSpec((None, *TRIVIAL_SHAPE[1:]), "float32")}
    with OnnxrtRunner(SessionFromOnnx(identity_onnx(), threads=threads), name="identity") as onnx_runner, \
            TorchRunner(torch.nn.Identity(), inputs=spec, output_names=["out"], threads=threads) as torch_runner:
        session = onnx_runner.session
        variant = Variant("base", 0, [Step(onnx_runner, 0)], 0)
        calls = {
            "empty call": lambda: None,
            "session.run": lambda: session.run(None, feeds),
            "runner.infer": lambda: onnx_runner.infer(feeds),
            "variant.run": lambda: variant.run(images),
            "torch eager": lambda: torch_runner.infer(feeds),
        }
        timings = time_interleaved(calls, batch=TRIVIAL_SHAPE[0], protocol=protocol,
                                   progress="harness overhead" if show_progress else None)
    return OverheadResult(machine_info(threads), protocol, timings)
