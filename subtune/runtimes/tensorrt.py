"""TensorRT engine building through Polygraphy's loaders, for TensorRT 10 and 11.

UNRUN: TensorRT cannot be installed on the CPU-only machines subtune is developed and tested
on (PyPI's TensorRT library wheels download from NVIDIA's index, which is unreachable there),
and no GPU was available. This code follows the documented TensorRT and Polygraphy APIs; its
tests are marked `gpu` and skip without TensorRT and a CUDA device.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from subtune.atomic import atomic_path
from subtune.errors import SubtuneError


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT and a CUDA GPU are usable here, else why not (one line)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'subtune[tensorrt]' on a machine with NVIDIA's index)"
    try:
        import tensorrt as trt

        if trt.Builder(trt.Logger(trt.Logger.ERROR)) is None:  # None or an exception: no usable GPU
            return "TensorRT could not create a builder (no CUDA device?)"
    except Exception as e:  # noqa: BLE001 - any failure here means "no usable GPU"
        return f"TensorRT cannot use a GPU here ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
    return None


def parse_batch_range(text: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise SubtuneError(f"--batch-range expects MIN,OPT,MAX (e.g. 1,8,32), found {text!r}") from None
    if not 1 <= lo <= opt <= hi:
        raise SubtuneError(f"--batch-range needs 1 <= MIN <= OPT <= MAX, found {text!r}")
    return lo, opt, hi


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, input_size: tuple[int, int],
                 batch_range: tuple[int, int, int] = (1, 8, 32), workspace_gib: float = 4.0) -> None:
    """Parse the ONNX file and build a serialized engine with one dynamic-batch profile.

    FP32 only here: TensorRT 11 removed the FP16/INT8 builder flags (reduced precision comes
    from the ONNX graph itself: an FP16 graph, or QDQ nodes), and TensorRT 10 builds FP32
    unless asked otherwise, so the same call serves both."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise SubtuneError(f"cannot build a TensorRT engine: {reason}; compile with -o model.onnx for the CPU path")
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    lo, opt, hi = batch_range
    h, w = input_size
    profile = Profile().add("images", min=(lo, 3, h, w), opt=(opt, 3, h, w), max=(hi, 3, h, w))
    config = CreateConfig(profiles=[profile], memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_gib * (1 << 30))})
    with atomic_path(engine_path) as tmp:
        SaveEngine(EngineFromNetwork(NetworkFromOnnxPath(str(onnx_path)), config=config), path=str(tmp))()
    if not Path(engine_path).is_file():
        raise SubtuneError(f"TensorRT did not produce {engine_path}")
