"""torch -> ONNX with the dynamo exporter (torch.export), the only path that handles both
dynamic batch and torchvision ViT's fused attention in eval mode; and ONNX -> file.

Files: an ONNX file is one protobuf message, which cannot exceed 2 GiB. A graph whose weights
come near that is written as a pair, `model.onnx` plus its weights in `model.onnx.data`
(ONNX external data, 64 KiB-aligned so runtimes can map it), renamed into place together
(subtune/atomic.py); ONNX Runtime and TensorRT's parser load the pair from the .onnx path.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import onnx_ir as ir
import torch

from subtune.errors import SubtuneError
# one definition of when a graph no longer fits one protobuf message, for the compiler and quantisation alike
from subtune.quantization.files import EXTERNAL_DATA_THRESHOLD, PROTOBUF_LIMIT, weight_bytes  # noqa: F401
from subtune.quantization.files import too_large as needs_external_data

OPSET = 20  # the newest opset TensorRT 10's parser accepts
MAX_BATCH = 4096  # the dynamic batch's upper bound torch.export is told
PRIVATE_EXPORTER_TORCH = "2.14"  # the torch release _private_exporter's entry was written against
_PRIVATE_EXPORTER_ARGUMENTS = {"registry", "dynamic_shapes", "input_names", "output_names", "opset_version", "optimize",
                               "verbose"}
EXTERNAL_DATA_SUFFIX = ".data"  # model.onnx -> model.onnx.data

log = logging.getLogger("subtune")


def export_onnx(module: torch.nn.Module, example: torch.Tensor, output_names: list[str], *,
                index_inputs: Sequence[str] = ()) -> ir.Model:
    """Export with a dynamic batch axis named `batch` on `images` and every output.

    `index_inputs`: names of 1-d int64 inputs after `images` (task selection: the rows of the batch
    that asked for each task), each with a dynamic size of its own from 0, which the module's
    forward takes as `forward(images, *rows)`; exported with every row of the example."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    args: tuple = (example,)
    dynamic_shapes: dict | tuple = {"images": {0: batch}}
    if index_inputs:
        rows = torch.arange(example.shape[0], dtype=torch.int64)
        args = (example, *(rows.clone() for _ in index_inputs))
        # forward(images, *rows): torch.export sees the varargs as one tuple
        dynamic_shapes = ({0: batch}, tuple({0: torch.export.Dim(f"rows{i}", min=0, max=MAX_BATCH)}
                                            for i in range(len(index_inputs))))
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _quiet_loggers():
        warnings.simplefilter("ignore")
        try:
            program = _export(module, args, input_names=["images", *index_inputs], output_names=output_names,
                              dynamic_shapes=dynamic_shapes, opset_version=OPSET, optimize=True, verbose=False)
        except Exception as e:  # the exporter's errors are long; keep the first line for the user
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SubtuneError(f"ONNX export failed: {first[:300]}; rerun with --debug for the full trace") from e
    return program.model


def _export(module, args, **kwargs):
    """torch.onnx.export(dynamo=True), through the private entry when it is usable (see
    _private_exporter), else the public API."""
    exporter = _private_exporter(kwargs["opset_version"])
    if exporter is None:
        return torch.onnx.export(module, args, dynamo=True, **kwargs)
    return exporter(module, args, **kwargs)


@functools.cache
def _private_exporter(opset: int):
    """The one adapter to torch's private exporter entry: `_core.export` with one translation
    registry per process (building the registry costs ~3 s a call, more than exporting a small
    model). Written against torch PRIVATE_EXPORTER_TORCH; any failure to reach it (any exception
    type: a moved module, a renamed class, a changed signature) is logged once, naming the torch
    release it expects, and returns None: the public torch.onnx.export then does the work."""
    try:
        from torch.onnx._internal.exporter import _core, _registration

        accepted = inspect.signature(_core.export).parameters
        missing = sorted(_PRIVATE_EXPORTER_ARGUMENTS - set(accepted))
        if missing:
            raise TypeError(f"_core.export takes no {', '.join(missing)}")
        registry = _registration.ONNXRegistry.from_torchlib(opset_version=opset)
    except Exception as e:  # noqa: BLE001 - whatever moved, the public API still works
        log.warning("torch %s: the private ONNX exporter entry subtune uses (torch.onnx._internal.exporter, written "
                    "against torch %s) is not usable (%s: %s); exporting through the public torch.onnx.export "
                    "instead, about 3 s slower per export", torch.__version__, PRIVATE_EXPORTER_TORCH,
                    type(e).__name__, str(e).strip()[:200])
        return None
    return functools.partial(_core.export, registry=registry)


@contextlib.contextmanager
def _quiet_loggers():
    names = ["torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir"]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


# --------------------------------------------------------------------------- ONNX files


def external_data_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + EXTERNAL_DATA_SUFFIX)


def onnx_bytes(model: ir.Model) -> bytes:
    """The model as one serialized message; a graph over 2 GiB cannot be, so say what to do."""
    if needs_external_data(model):
        raise SubtuneError(f"the graph's weights ({weight_bytes(model) / 2**30:.2f} GiB) exceed what one ONNX file holds "
                           "(2 GiB): save it with external data (subtune.compiler.export.save_onnx) instead of as bytes")
    return ir.to_proto(model).SerializeToString()


def save_onnx(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> list[Path]:
    """Write `model` to `path` atomically: one file, or with external data (None: only when the
    graph needs it) the pair path + path.data, renamed into place together. A stale weights file
    of an earlier save is removed when the new model is one file. Returns the files written."""
    from subtune.atomic import atomic_files

    path = Path(path)
    data = external_data_path(path)
    external = needs_external_data(model) if external_data is None else external_data
    with atomic_files(path, data) as (tmp, _):
        write_onnx(model, tmp, external=external)
    if not external and data.is_file():
        log.info("removing %s, the weights file of an earlier save of %s", data, path)
        data.unlink()
    return [path, data] if external else [path]


def write_onnx(model: ir.Model, path: str | os.PathLike, *, external: bool) -> None:
    """Write `model` to `path` (not atomically: see save_onnx), its weights in `path.data` when
    `external`. Either way one tensor's bytes at a time are in memory beyond the model's own."""
    path = Path(path)
    if not external:
        if needs_external_data(model):  # the message could not be read back
            onnx_bytes(model)  # raises, saying what to do
        _write_one_message(model, path)
        return
    data = external_data_path(path)
    log.info("writing %s with its weights in %s (ONNX external data: %.2f GiB of weights)", path, data.name,
             weight_bytes(model) / 2**30)
    kwargs = {"external_data": data.name, "size_threshold_bytes": EXTERNAL_DATA_MIN_BYTES}
    try:
        ir.save(model, path, alignment=65536, **kwargs)  # aligned: runtimes can map the weights
    except TypeError:  # onnx-ir before 1.1 aligns large tensors by default and has no `alignment`
        ir.save(model, path, **kwargs)


EXTERNAL_DATA_MIN_BYTES = 1024  # smaller initializers stay in the .onnx message

# Field numbers and wire type of the three ONNX protobuf fields _write_one_message writes itself
# (onnx.proto: ModelProto.graph = 7, GraphProto.initializer = 5, TensorProto.raw_data = 9).
_LENGTH_DELIMITED = 2
_GRAPH, _INITIALIZER, _RAW_DATA = ((n << 3 | _LENGTH_DELIMITED).to_bytes(1, "little") for n in (7, 5, 9))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _write_one_message(model: ir.Model, path: Path) -> None:
    """`model` as one ONNX protobuf message, streamed: ir.to_proto would hold every weight twice more
    (in the message and in its serialization), 2 GB each for a 60-task ResNet-50.

    The message is the model with its initializers' metadata only, then a second `graph` field
    holding the initializers, each tensor's bytes written as they are read. Protobuf merges a
    message field that occurs twice (the encoding's rule, which every ONNX reader's protobuf
    follows), so a reader sees one graph with these initializers in this order."""
    graph = model.graph
    streamed: dict[str, ir.TensorProtocol] = {}
    for value in graph.initializers.values():
        tensor = value.const_value
        if tensor is not None and tensor.dtype != ir.DataType.STRING and tensor.nbytes >= EXTERNAL_DATA_MIN_BYTES:
            streamed[value.name] = tensor
            # A placeholder that serializes its metadata and no data (restored below)
            value.const_value = ir.ExternalTensor("streamed", 0, tensor.nbytes, tensor.dtype, shape=tensor.shape,
                                                  name=value.name, doc_string=tensor.doc_string,
                                                  metadata_props=dict(tensor.metadata_props))
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for name, tensor in streamed.items():
            graph.initializers[name].const_value = tensor
    initializers = list(proto.graph.initializer)
    del proto.graph.initializer[:]
    heads = []
    for tensor_proto in initializers:
        if tensor_proto.name in streamed:
            tensor_proto.ClearField("external_data")
            tensor_proto.ClearField("data_location")
            n = streamed[tensor_proto.name].nbytes
            heads.append((tensor_proto.SerializeToString(), n, _RAW_DATA + _varint(n)))
        else:
            heads.append((tensor_proto.SerializeToString(), 0, b""))
    sizes = [len(meta) + len(raw_head) + n for meta, n, raw_head in heads]
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
        del proto
        f.write(_GRAPH + _varint(sum(len(_INITIALIZER) + len(_varint(size)) + size for size in sizes)))
        for tensor_proto, (meta, n, raw_head), size in zip(initializers, heads, sizes):
            f.write(_INITIALIZER + _varint(size) + meta)
            if raw_head:
                data = streamed[tensor_proto.name].tobytes()
                if len(data) != n:
                    raise RuntimeError(f"internal error: initializer {tensor_proto.name!r} gave {len(data)} bytes, "
                                       f"expected {n}")
                f.write(raw_head)
                f.write(data)
                del data


@contextlib.contextmanager
def weights_on_disk(model: ir.Model, directory: str | os.PathLike | None = None):
    """For the `with` block, `model`'s weights live in a file, not in memory: the model is written
    to a temporary directory (in `directory`; None: the system's) as model.onnx with its weights
    beside it (external data), and its large initializers become views of that file (read when
    asked). Yields the .onnx path, for a runtime to load: the runtime's copy of the weights is then
    the only one in memory. Afterwards the weights are read back into memory, one tensor at a time,
    and the directory is removed."""
    with tempfile.TemporaryDirectory(prefix=".subtune-", dir=directory) as scratch:
        path = Path(scratch) / "model.onnx"
        data = external_data_path(path)
        try:
            ir.external_data.unload_from_model(model, scratch, data.name, size_threshold_bytes=EXTERNAL_DATA_MIN_BYTES,
                                               alignment=65536)
        except TypeError:  # onnx-ir before 1.1: no `alignment`
            ir.external_data.unload_from_model(model, scratch, data.name, size_threshold_bytes=EXTERNAL_DATA_MIN_BYTES)
        try:
            ir.save(model, path)  # the initializers are external now: only the small message is written
            yield path
        finally:
            for value in model.graph.initializers.values():
                tensor = value.const_value
                if isinstance(tensor, ir.ExternalTensor) and Path(tensor.path).parent == Path(scratch):
                    value.const_value = ir.Tensor(tensor.numpy().copy(), dtype=tensor.dtype, name=tensor.name,
                                                  doc_string=tensor.doc_string,
                                                  metadata_props=dict(tensor.metadata_props))
                    tensor.release()  # unmapped: a mapping left open keeps every page read in memory
