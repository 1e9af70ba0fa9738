"""Static INT8 post-training quantisation of a multi-task graph into QDQ form, base output pinned.

Two targets (TARGETS), one QDQ graph each; both quantise weights per output channel,
symmetrically, keep biases float (TensorRT's DequantizeLinear takes no int32; ONNX Runtime
quantises biases itself when it fuses a convolution) and leave the heads' outputs, the logits,
in float:
  tensorrt (default)  what TensorRT's explicit quantisation takes: int8 activations, one scale
              per tensor, zero point 0; 8-bit weights.
  cpu         what ONNX Runtime's x86 kernels run fastest and exactly: uint8 activations with a
              zero point (a ReLU folds into the range), 7-bit weights (x86 without VNNI adds pairs
              of products in 16 bits, which 8-bit weights saturate). TensorRT refuses this graph.
              Why a second graph: on x86, ONNX Runtime fuses a signed-int8 convolution only where
              the tensors around it feed a single consumer, so it runs the tensorrt graph partly
              as float convolutions on dequantised values, and which ones depends on the graph.

Pinning, so that adding tasks never changes the base output:
  1. The base stream (base_stream.py: found by the stream roles the compiler records in each
     node, not by node names) is calibrated alone: the base's ranges.
  2. The multi-task graph is calibrated as it runs: each task branch gets its own ranges.
  3. Every tensor on the base path takes the base's range, by name or through the stream's
     aliases (merge outputs, split intermediates). The shared layers after a merge see the task
     rows too, yet are quantised with the base's ranges: task activations beyond them clip
     (`merges` in the report says by how much each task's range exceeds the pinned one).
  4. Both graphs go through ONNX Runtime's quantize_static with these ranges, so every base-path
     tensor gets the same scale and zero point in both. Arithmetic that treats rows alike
     (TensorRT's int8 kernels; ONNX Runtime's uint8 kernels for the cpu graph, or its QDQ run as
     written for the tensorrt graph) then gives the multi-task graph the base-only graph's base
     output, bit for bit. compare.py checks that on every compile; tests/quantization guards it
     against a base-only graph compiled on its own.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from subtune.quantization.base_stream import base_path, extract_base_stream, is_merge
from subtune.quantization.calibration import (CalibrationSet, method_enum, quiet_onnxruntime_quantization,
                                              tensor_ranges)
from subtune.quantization.files import load_into_memory, save, too_large

QDQ_OPTIONS = {
    "WeightSymmetric": True,
    "QuantizeBias": False,  # TensorRT's DequantizeLinear takes no int32
    "OpTypesToExcludeOutputQuantization": ["Gemm"],  # 2-D Gemms are the heads: logits stay float
    # Relu/Clip stay in the graph (ONNX Runtime folds them into the next QuantizeLinear at run time all the
    # same): a layer that falls back to fp32 (mixed.py) reads the activation's float value, not its input.
    "QDQKeepRemovableActivations": True,
}


@dataclass(frozen=True)
class Target:
    activation_type: str  # onnxruntime.quantization.QuantType member
    symmetric: bool  # activations: zero point 0 and ranges symmetric around it
    reduce_range: bool  # 7-bit weights
    activations: str  # for the report


TARGETS = {
    "tensorrt": Target("QInt8", True, False, "int8, per tensor, symmetric (zero point 0)"),
    "cpu": Target("QUInt8", False, True, "uint8, per tensor, asymmetric (zero point from the range)"),
}


@dataclass
class Int8Graphs:
    model: ir.Model  # the multi-task graph in QDQ form
    base_only: ir.Model  # the base stream alone, quantised with the same (pinned) ranges
    report: dict


def quantize_int8(model: ir.Model, calibration: CalibrationSet, method: str = "minmax",
                  target: str = "tensorrt") -> Int8Graphs:
    spec = TARGETS[target]
    clock = time.perf_counter
    start = clock()
    stream = extract_base_stream(model)
    base_ranges = tensor_ranges(stream.model, calibration.images, method, symmetric=spec.symmetric,
                                desc="calibrating the base")
    alone = len(model.graph.outputs) == 1  # no tasks: the graph is its own base stream
    graph_ranges = base_ranges if alone else tensor_ranges(model, calibration.images, method, symmetric=spec.symmetric,
                                                           desc="calibrating the tasks")
    calibrated = clock()
    ranges, pinned = pin_base_ranges(graph_ranges, base_ranges, stream.aliases, base_path(model))
    quantised = quantize_qdq(model, ranges, method, spec)
    base_only = quantised if alone else quantize_qdq(stream.model, _bounds(base_ranges), method, spec)
    seconds = {"calibration": round(calibrated - start, 3), "quantize_static": round(clock() - calibrated, 3)}
    scheme = {"target": target, "format": "QDQ (QuantizeLinear/DequantizeLinear)", "activations": spec.activations,
              "weights": f"int8{' in a 7-bit range' if spec.reduce_range else ''}, per output channel, symmetric",
              "biases": "float", "outputs": "float",
              "tensorrt_compatible": target == "tensorrt"}
    report = {"scheme": scheme, "calibration": {"source": calibration.source, "images": len(calibration.images),
                                                "method": method},
              "tensors": {"calibrated": len(ranges), "pinned_to_base": len(pinned),
                          "task_calibrated": len(ranges) - len(pinned)},
              "merges": merge_ranges(model, ranges, graph_ranges), "seconds": seconds}
    return Int8Graphs(quantised, base_only, report)


def pin_base_ranges(graph_ranges: dict, base_ranges: dict, aliases: dict[str, str],
                    on_base_path: set[str]) -> tuple[dict[str, tuple[float, float]], set[str]]:
    """Ranges for the multi-task graph (rules 2 and 3): a tensor the base stream measured, or one
    aliased to such a tensor, takes the base's range; the rest keep their own. Returns
    {tensor: (low, high)} and the names that were pinned."""
    ranges, pinned = {}, set()
    for name, data in graph_ranges.items():
        source = name if name in base_ranges else aliases.get(name)
        if source is not None and source in base_ranges:
            ranges[name] = _bound(base_ranges[source])
            pinned.add(name)
        elif name in on_base_path:
            raise RuntimeError(f"internal error: base-path tensor {name!r} has no range from the base stream")
        else:
            ranges[name] = _bound(data)
    return ranges, pinned


def quantize_qdq(model: ir.Model, ranges: dict[str, tuple[float, float]], method: str,
                 target: Target = TARGETS["tensorrt"]) -> ir.Model:
    """ONNX Runtime's quantize_static over ranges measured beforehand (its calibration cache)."""
    from onnxruntime.quantization import QuantFormat, QuantType, TensorsData, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, save_tensors_data

    method_id = method_enum(method)
    data = TensorsData(method_id, {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                                   for k, (lo, hi) in ranges.items()})
    with tempfile.TemporaryDirectory(prefix="subtune-int8-") as tmp, quiet_onnxruntime_quantization():
        cache, out = Path(tmp) / "ranges.json", Path(tmp) / "int8.onnx"
        save_tensors_data(data, cache)
        # from a file: quantize_static would otherwise copy the proto and write it out itself, and a graph over
        # 2 GiB only goes this way (its weights as external data)
        quantize_static(save(model, Path(tmp) / "fp32.onnx"), out, None, quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=target.reduce_range,
                        activation_type=getattr(QuantType, target.activation_type), weight_type=QuantType.QInt8,
                        calibrate_method=method_id, calibration_cache_path=cache,
                        use_external_data_format=too_large(model),
                        extra_options={**QDQ_OPTIONS, "ActivationSymmetric": target.symmetric})
        quantised = load_into_memory(out)
    quantised.graph.name = model.graph.name
    return quantised


def merge_ranges(model: ir.Model, ranges: dict, graph_ranges: dict) -> list[dict]:
    """For each merge: the pinned range of the shared stream, and how far each rejoining task's own
    range reaches past it (ratio > 1: that task's activations clip there)."""
    rows = []
    for node in model.graph:
        if not is_merge(node) or node.outputs[0].name not in ranges:
            continue
        low, high = ranges[node.outputs[0].name]
        limit = max(abs(low), abs(high)) or 1.0
        tasks = []
        for value in node.inputs[1:]:
            if value is not None and value.name in graph_ranges:
                lo, hi = _bound(graph_ranges[value.name])
                ratio = round(max(abs(lo), abs(hi)) / limit, 4)
                tasks.append({"tensor": value.name, "range": [lo, hi], "ratio": ratio})
        rows.append({"merge": node.name, "pinned_range": [low, high], "rejoining": tasks})
    return rows


def _bound(data) -> tuple[float, float]:
    low, high = data.range_value  # float32 arrays of one element
    return float(np.asarray(low).item()), float(np.asarray(high).item())


def _bounds(tensors_data) -> dict[str, tuple[float, float]]:
    return {name: _bound(data) for name, data in tensors_data.items()}
