"""torch -> ONNX with the dynamo exporter (torch.export), the only path that handles both
dynamic batch and torchvision ViT's fused attention in eval mode."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings

import onnx_ir as ir
import torch

from subtune.errors import SubtuneError

OPSET = 20  # the newest opset TensorRT 10's parser accepts


def export_onnx(module: torch.nn.Module, example: torch.Tensor, output_names: list[str]) -> ir.Model:
    """Export with a dynamic batch axis named `batch` on `images` and every output."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _quiet_loggers():
        warnings.simplefilter("ignore")
        try:
            program = _export(module, (example,), input_names=["images"], output_names=output_names,
                              dynamic_shapes={"images": {0: batch}}, opset_version=OPSET, optimize=True, verbose=False)
        except Exception as e:  # the exporter's errors are long; keep the first line for the user
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SubtuneError(f"ONNX export failed: {first[:300]}; rerun with --debug for the full trace") from e
    return program.model


def _export(module, args, **kwargs):
    """torch.onnx.export(dynamo=True), reusing one translation registry per process: building it
    costs ~3 s a call, more than exporting a small model. Falls back to the public API if the
    private pieces move."""
    try:
        from torch.onnx._internal.exporter import _core

        registry = _torchlib_registry(kwargs["opset_version"])
    except (ImportError, AttributeError):
        return torch.onnx.export(module, args, dynamo=True, **kwargs)
    return _core.export(module, args, registry=registry, **kwargs)


@functools.cache
def _torchlib_registry(opset: int):
    from torch.onnx._internal.exporter import _registration

    return _registration.ONNXRegistry.from_torchlib(opset_version=opset)


@contextlib.contextmanager
def _quiet_loggers():
    names = ["torch.onnx", "torch.export", "torch._dynamo", "onnxscript"]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
