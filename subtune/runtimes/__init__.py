"""Runtimes behind one runner interface (base.py): ONNX Runtime (CPU; CUDA and TensorRT
execution providers when present), TensorRT `.plan` engines, and PyTorch eager.

    base.py         BaseRunner (activate / infer / deactivate / describe / last inference time)
    onnxruntime.py  SessionFromOnnx loader, OnnxrtRunner, CompiledGraphRunner (a compiled graph by
                    output and task name; per-image task selection)
    tensorrt.py     build_engine, compare_engine, EngineFromPath loader, TrtRunner (UNRUN: needs a GPU)
    pytorch.py      TorchRunner

Every module here imports its runtime only when a loader or runner is used, so a CPU-only
install imports all of them cleanly and a missing runtime fails with what to install.
"""

from __future__ import annotations

import os
from pathlib import Path

from subtune.errors import SubtuneError
from subtune.runtimes.base import BaseRunner, TensorSpec
from subtune.runtimes.onnxruntime import CompiledGraphRunner, OnnxrtRunner, SessionFromOnnx
from subtune.runtimes.pytorch import TorchRunner
from subtune.runtimes.tensorrt import EngineFromPath, TrtRunner

ENGINE_SUFFIXES = (".plan", ".engine")

__all__ = ["BaseRunner", "TensorSpec", "OnnxrtRunner", "CompiledGraphRunner", "SessionFromOnnx", "TorchRunner",
           "TrtRunner", "EngineFromPath", "runner_for_file"]


def runner_for_file(path: str | os.PathLike, *, provider: str | None = None, threads: int | None = None,
                    shared_pool: bool = False, cuda_graph: bool = False) -> BaseRunner:
    """A (not yet active) runner for a model file: `.onnx` through ONNX Runtime with `provider`
    (default cpu), `.plan`/`.engine` through TensorRT."""
    path = Path(path)
    if not path.is_file():
        raise SubtuneError(f"model file {path} not found")
    if path.suffix in ENGINE_SUFFIXES:
        if provider is not None:
            raise SubtuneError(f"{path} is a TensorRT engine: --provider applies to .onnx models only")
        return TrtRunner(EngineFromPath(path), cuda_graph=cuda_graph, name=path.name)
    if path.suffix != ".onnx":
        raise SubtuneError(f"{path}: expected a .onnx model or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})")
    if cuda_graph:
        raise SubtuneError("--cuda-graph applies to TensorRT engines (.plan) only")
    return OnnxrtRunner(SessionFromOnnx(path, provider=provider or "cpu", threads=threads, shared_pool=shared_pool),
                        name=path.name)
