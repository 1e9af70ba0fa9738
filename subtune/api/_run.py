"""`subtune.load_graph`: a compiled graph, run from Python by output and task name."""

from __future__ import annotations

import os
from pathlib import Path

from subtune.errors import SubtuneError


def load_graph(path: str | os.PathLike, *, provider: str = "cpu", threads: int | None = None):
    """A runner (subtune.runtimes.CompiledGraphRunner) for a graph `subtune-compile` wrote; use it
    as a context manager, which creates the ONNX Runtime session:

        with subtune.load_graph("model.onnx") as graph:
            outputs = graph.run(images)                      # {"base": ..., "dogs": ..., ...}
            outputs = graph.run(images, tasks=["dogs"])      # --task-select graphs: only what is asked

    provider: cpu (default), cuda or tensorrt (ONNX Runtime execution providers); threads:
    intra-op threads (default one per physical core). `tasks` forms and the NaN fill:
    CompiledGraphRunner.run, docs/task-selection.md."""
    from subtune.runtimes.onnxruntime import CompiledGraphRunner, SessionFromOnnx

    path = Path(path)
    if path.suffix != ".onnx":
        raise SubtuneError(f"{path}: expected a compiled .onnx graph (subtune-compile ... -o model.onnx)")
    if not path.is_file():
        raise SubtuneError(f"{path}: no such file; expected a graph subtune-compile wrote")
    return CompiledGraphRunner(SessionFromOnnx(path, provider=provider, threads=threads), name=path.name)
