"""make_session: the one way subtune makes an ONNX Runtime session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import subtune
from subtune.errors import SubtuneError
from subtune.runtimes.onnxruntime import SessionFromOnnx, make_session, session_from_bytes


@pytest.mark.parametrize("batch", [1, 4])
def test_settings_reach_the_session_and_it_computes(affine, affine_path, batch):
    model, w, b = affine
    x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
    for source in (model, affine_path, str(affine_path)):
        session = make_session(source, threads=1, optimization="basic", prepack=False,
                               config={"session.disable_quant_qdq": "1"})
        opts = session.get_session_options()
        assert opts.intra_op_num_threads == 1
        assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert opts.get_session_config_entry("session.disable_prepacking") == "1"
        assert opts.get_session_config_entry("session.disable_quant_qdq") == "1"
        assert session.get_providers() == ["CPUExecutionProvider"]
        (y,) = session.run(["y"], {"images": x})
        np.testing.assert_allclose(y, x @ w + b, rtol=1e-5, atol=1e-6)


def test_defaults_match_the_loader_and_the_cpu_helper(affine):
    made = [make_session(affine[0]), SessionFromOnnx(affine[0])(), session_from_bytes(affine[0])]
    for session in made:
        opts = session.get_session_options()
        assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert session.get_providers() == ["CPUExecutionProvider"]


def test_bad_arguments_and_models(tmp_path):
    with pytest.raises(ValueError, match="expected one of disabled, basic, extended, all"):
        make_session(b"", optimization="max")
    with pytest.raises(SubtuneError, match="could not load the model"):
        make_session(b"not a protobuf")
    with pytest.raises(SubtuneError, match="not found"):
        make_session(tmp_path / "absent.onnx")
    with pytest.raises(SubtuneError, match="expected one of cpu, cuda, tensorrt"):
        make_session(b"", provider="vulkan")


def test_no_other_place_makes_a_session():
    """Every InferenceSession in the package comes from runtimes/onnxruntime.py, except the Triton
    python-backend model, which runs in the server's environment without subtune."""
    root = Path(subtune.__file__).parent
    makers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "InferenceSession(" in p.read_text())
    assert makers == ["runtimes/onnxruntime.py", "serving/models/graph_model.py"]
    assert root.joinpath("runtimes/onnxruntime.py").read_text().count("InferenceSession(") == 1
