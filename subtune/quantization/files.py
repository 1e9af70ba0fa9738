"""Graphs as ONNX Runtime and its quantisation tools load them: one serialized message, or, for a
graph whose weights pass protobuf's 2 GiB, a file in a temporary folder with its weights beside it
as ONNX external data. The limit and the threshold are defined here once; the compiler's writer
(compiler/export.py, a layer above) uses them too.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx_ir as ir

PROTOBUF_LIMIT = 2**31  # bytes: protobuf refuses to serialize a larger message
# Weights above this go to an external data file: the rest of the graph (nodes, names, metadata)
# must fit in the margin, which is generous for any graph subtune makes (a few MB).
EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT - 2**27


def weight_bytes(model: ir.Model) -> int:
    """Bytes of the graph's initializers (what decides whether it fits in one message)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def too_large(model: ir.Model) -> bool:
    """The graph cannot be one serialized message."""
    return weight_bytes(model) >= EXTERNAL_DATA_THRESHOLD


def save(model: ir.Model, path: Path) -> Path:
    """`model` at `path`, its weights in `path.data` when it is too large for one message."""
    if too_large(model):
        ir.save(model, path, external_data=path.name + ".data", size_threshold_bytes=1024)
    else:
        ir.save(model, path)
    return path


@contextlib.contextmanager
def on_disk(model: ir.Model, name: str = "model.onnx") -> Iterator[Path]:
    """A temporary file holding `model` (save), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="subtune-quant-") as tmp:
        yield save(model, Path(tmp) / name)


@contextlib.contextmanager
def runnable(model: ir.Model) -> Iterator[bytes | Path]:
    """What make_session takes: the serialized graph, or a temporary file for a graph too large
    for that."""
    if too_large(model):
        with on_disk(model) as path:
            yield path
    else:
        yield ir.to_proto(model).SerializeToString()


def load_into_memory(path: Path) -> ir.Model:
    """A model read from `path` with every external tensor read in, so the file may go."""
    model = ir.load(path)
    if any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()):
        model = ir.external_data.load_to_model(model)
    return model
