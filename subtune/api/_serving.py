"""`subtune.triton_repo`: what `subtune triton-repo` does. A Triton model repository for a
compiled graph, written to a temporary folder and renamed into place."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from subtune.serving.repository import Repository

log = logging.getLogger("subtune")

__all__ = ["Repository", "triton_repo"]


def triton_repo(graph: str | os.PathLike, output: str | os.PathLike, *, name: str | None = None,
                backend: str | None = None, max_batch_size: int = 8, instances: int = 1, device: str | None = None,
                dynamic_batching: bool = True, queue_delay_us: int = 200, threads: int = 0,
                preprocess: bool = False, overwrite: bool = False) -> "Repository":
    """Write a Triton model repository for `graph` (a compiled model.onnx, or engine.plan with the
    engine.onnx it was built from beside it) at the folder `output`.

    An engine and its engine.onnx must be one compile's pair (each records the other's hash),
    and `max_batch_size` must lie within the engine's batch profile: both are refused otherwise.

    backend: python (ONNX Runtime in Triton's python backend; the default for .onnx),
        onnxruntime or tensorrt (NVIDIA's Triton containers; tensorrt is the default for an
        engine). threads: ONNX Runtime intra-op threads per instance (0: cores / instances).
    preprocess: add a model that decodes, resizes and normalises encoded images as the tasks
        were trained, and an ensemble `<name>_ensemble` chaining it to the graph.
    overwrite: replace an existing `output` folder (otherwise an error).
    Returns the Repository: its path, models, backend, outputs and label files."""
    from subtune.serving.graph import read_graph
    from subtune.serving.repository import RepoOptions, write_repository

    info = read_graph(graph)  # an engine: checked to be one compile's pair with the engine.onnx beside it
    if info.is_engine and backend in (None, "tensorrt"):
        from subtune.runtimes.tensorrt import ENGINE_KEY, check_max_batch_size

        check_max_batch_size(info.path, info.metadata[ENGINE_KEY]["batch_range"], max_batch_size)
    opts = RepoOptions(name=name, backend=backend, max_batch_size=max_batch_size, instances=instances,
                       device=device, dynamic_batching=dynamic_batching, queue_delay_us=queue_delay_us,
                       preprocess=preprocess, ort_threads=threads)
    repo = write_repository(graph, output, opts, overwrite=overwrite)
    log.info("wrote the Triton repository %s: models %s", repo.path, ", ".join(repo.models))
    return repo


def __getattr__(name: str):
    if name == "Repository":  # the result class, without importing the serving package up front
        from subtune.serving.repository import Repository

        return Repository
    raise AttributeError(name)
