"""TensorRT runs only with TensorRT and a CUDA GPU; here (CPU only) the gpu tests skip with the
reason, and the tests above them check the failure is a clear user error."""

from __future__ import annotations

import numpy as np
import pytest

from subtune.errors import SubtuneError
from subtune.runtimes import EngineFromPath, TrtRunner
from subtune.runtimes.tensorrt import build_engine, tensorrt_unavailable_reason

REASON = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(REASON is not None, reason=f"UNRUN here: {REASON}")


def test_missing_engine_file_is_a_user_error(tmp_path):
    with pytest.raises(SubtuneError, match="not found"):
        EngineFromPath(tmp_path / "absent.plan")()


@pytest.mark.skipif(REASON is None, reason="TensorRT is usable here")
def test_without_tensorrt_the_runner_says_what_is_missing(tmp_path):
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"\0")
    runner = TrtRunner(EngineFromPath(engine))
    with pytest.raises(SubtuneError, match="cannot run a TensorRT engine: " + REASON.split(" (")[0]):
        runner.activate()
    assert not runner.is_active


@pytest.fixture
def engine_path(tmp_path, affine_path):
    path = tmp_path / "affine.plan"
    build_engine(affine_path, path, input_size=(1, 4), batch_range=(1, 4, 8), sample_shape=(4,))
    return path


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_engine_matches_numpy_at_several_batches(engine_path, affine, cuda_graph):
    _, w, b = affine
    with TrtRunner(EngineFromPath(engine_path), cuda_graph=cuda_graph) as runner:
        assert runner.input_metadata()["images"].shape == (None, 4)
        for batch in (1, 5, 1):  # changing shapes rebinds buffers (and re-captures the graph)
            x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
            np.testing.assert_allclose(runner.infer({"images": x})["y"], x @ w + b, rtol=1e-3, atol=1e-3)
        assert runner.last_inference_time() > 0
        assert runner.describe()["cuda_graph"] is cuda_graph


@pytest.mark.gpu
@needs_tensorrt
def test_batch_outside_the_profile_is_a_user_error(engine_path):
    with TrtRunner(EngineFromPath(engine_path)) as runner:
        with pytest.raises(SubtuneError, match="outside the engine's profile"):
            runner.infer({"images": np.zeros((9, 4), np.float32)})
