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


@pytest.mark.gpu
@needs_tensorrt
def test_compile_engine_end_to_end(tmp_path):
    """compile -> engine -> the engine run against the verified ONNX beside it (inside compile, at
    the verification batch sizes), then once more here at a batch size compile did not use."""
    import subtune
    from subtune.models import make_base
    from subtune.runtimes.onnxruntime import session_from_bytes
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)
    task = synthetic_task(base, "t", [3, 4], seed=1)
    result = subtune.compile(base, [task], tmp_path / "m.plan", image_size=32, verify_batches=(1, 3),
                             batch_range=(1, 4, 8))
    assert result.files == [tmp_path / "m.plan", tmp_path / "m.onnx", tmp_path / "m.report.json"]
    assert result.bytes == (tmp_path / "m.plan").stat().st_size
    comparison = result.report["engine"]["comparison"]
    assert {c["batch"] for c in comparison["checks"]} == {1, 3}
    assert max(c["relative_error"] for c in comparison["checks"]) <= comparison["tolerance"]
    x = np.random.default_rng(7).standard_normal((6, 3, 32, 32)).astype(np.float32)
    want = session_from_bytes(str(tmp_path / "m.onnx")).run(["base", "t"], {"images": x})
    with TrtRunner(EngineFromPath(result.output)) as runner:
        got = runner.infer({"images": x})
        for name, ref in zip(["base", "t"], want):
            assert np.abs(got[name] - ref).max() <= 1e-3 * np.abs(ref).max(), name


def test_compile_to_an_engine_without_tensorrt_names_the_cpu_path(tmp_path):
    if REASON is None:
        pytest.skip("TensorRT is usable here")
    import subtune
    from subtune.models import make_base

    base = make_base("subtune:tiny_resnet", seed=0)
    with pytest.raises(SubtuneError, match="use -o model.onnx for the CPU path"):
        subtune.compile(base, [], tmp_path / "m.plan")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
@needs_tensorrt
def test_a_compiled_engine_and_its_onnx_name_each_other(tmp_path):
    """#22 item 4 on a real engine: the engine's name is the graph hash of the engine.onnx beside it,
    which records the engine's sha256 and batch profile; `max_batch_size` is checked against the
    profile TensorRT reports; the engine of another compile is refused beside this ONNX."""
    import shutil

    import onnx

    import subtune
    from subtune.models import make_base
    from subtune.runtimes.tensorrt import check_engine_pair, engine_identity, file_sha256, onnx_graph_sha256
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)
    task = synthetic_task(base, "t", [3, 4], seed=1)
    result = subtune.compile(base, [task], tmp_path / "m.plan", image_size=32, verify_batches=(1, 3),
                             batch_range=(1, 4, 8))
    onnx_path = tmp_path / "m.onnx"
    name, profile = engine_identity(result.output)
    assert name == onnx_graph_sha256(onnx_path) == result.report["engine"]["graph_sha256"] and profile == (1, 4, 8)
    pair = check_engine_pair(result.output, onnx.load(str(onnx_path)), onnx_path)
    assert pair.checked_by_tensorrt and pair.sha256 == file_sha256(result.output) and pair.batch_range == (1, 4, 8)
    assert subtune.triton_repo(result.output, tmp_path / "repo", max_batch_size=8).backend == "tensorrt"
    with pytest.raises(SubtuneError, match="`max_batch_size` 16 exceeds"):
        subtune.triton_repo(result.output, tmp_path / "big", max_batch_size=16)
    (tmp_path / "other").mkdir()
    other = subtune.compile(base, [task], tmp_path / "other" / "m.plan", image_size=32, verify_batches=(1,),
                            batch_range=(1, 2, 4))
    shutil.copyfile(other.output, result.output)
    with pytest.raises(SubtuneError, match="different compiles"):
        subtune.triton_repo(result.output, tmp_path / "swapped")
