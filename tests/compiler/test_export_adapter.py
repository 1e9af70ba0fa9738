"""The private exporter entry (compiler/export.py, _private_exporter) is reached through one adapter:
whatever breaks there (any exception type), the export still works through the public API and the
log says which torch release the adapter expects."""

from __future__ import annotations

import logging

import pytest
import torch

from subtune.compiler import export
from subtune.compiler.export import PRIVATE_EXPORTER_TORCH, export_onnx


@pytest.fixture
def fresh_adapter():
    export._private_exporter.cache_clear()
    yield
    export._private_exporter.cache_clear()  # the next export finds the private entry again


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, images):
        return self.linear(images)


class Odd(Exception):
    """Not an ImportError or AttributeError: what a moved private API may raise just as well."""


@pytest.mark.parametrize("error", [ImportError("no module _registration"), Odd("registry layout changed")])
def test_a_broken_private_entry_falls_back_and_names_the_torch_it_expects(monkeypatch, caplog, fresh_adapter, error):
    from torch.onnx._internal.exporter import _registration

    original, calls = _registration.ONNXRegistry.from_torchlib, []

    def broken_once(cls, *args, **kwargs):  # the adapter's call fails; the public API's own calls work
        calls.append(1)
        if len(calls) == 1:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(_registration.ONNXRegistry, "from_torchlib", classmethod(broken_once))
    with caplog.at_level(logging.WARNING, logger="subtune"):
        model = export_onnx(Tiny().eval(), torch.randn(2, 4), ["out"])
    assert [v.name for v in model.graph.outputs] == ["out"]  # exported all the same, by the public API
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"written against torch {PRIVATE_EXPORTER_TORCH}" in warning and torch.__version__ in warning
    assert type(error).__name__ in warning


def test_a_changed_signature_is_caught_before_the_call(monkeypatch, caplog, fresh_adapter):
    from torch.onnx._internal.exporter import _core

    monkeypatch.setattr(_core, "export", lambda model, args, *, registry=None: None)  # lost its keywords
    with caplog.at_level(logging.WARNING, logger="subtune"):
        assert export._private_exporter(export.OPSET) is None
    assert "_core.export takes no dynamic_shapes" in caplog.text


def test_the_private_entry_is_used_where_it_works(fresh_adapter):
    assert export._private_exporter(export.OPSET) is not None
