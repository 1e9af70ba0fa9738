from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest

from subtune.errors import SubtuneError
from subtune.runtimes import OnnxrtRunner, SessionFromOnnx, TensorSpec, TrtRunner, runner_for_file
from subtune.runtimes.onnxruntime import providers_for


@pytest.mark.parametrize("batch", [1, 5])
def test_infer_matches_numpy_at_any_batch(affine, batch):
    model, w, b = affine
    x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
    with OnnxrtRunner(SessionFromOnnx(model, threads=1)) as runner:
        out = runner.infer({"images": x})
    assert list(out) == ["y"]
    np.testing.assert_allclose(out["y"], x @ w + b, rtol=1e-5, atol=1e-6)


def test_runner_lifecycle_and_timing(affine_path):
    runner = OnnxrtRunner(SessionFromOnnx(affine_path, threads=1))
    with pytest.raises(RuntimeError, match="activate"):
        runner.infer({"images": np.zeros((1, 4), np.float32)})
    with runner:
        assert runner.is_active
        assert runner.input_metadata() == {"images": TensorSpec((None, 4), "float32")}
        assert runner.output_names() == ["y"]
        assert runner.last_inference_time() is None
        runner.infer({"images": np.zeros((2, 4), np.float32)})
        assert runner.last_inference_time() > 0
    assert not runner.is_active and runner.session is None and runner.last_inference_time() is None


def test_describe_names_provider_version_and_threads(affine):
    with OnnxrtRunner(SessionFromOnnx(affine[0], threads=1), name="affine") as runner:
        info = runner.describe()
    assert info["runtime"] == "onnxruntime" and info["name"] == "affine"
    assert info["version"] == ort.__version__
    assert info["execution_providers"] == ["CPUExecutionProvider"]
    assert info["intra_op_threads"] == 1 and info["provider"] == "cpu"


def test_bad_feeds_are_user_errors(affine):
    with OnnxrtRunner(SessionFromOnnx(affine[0], threads=1)) as runner:
        with pytest.raises(SubtuneError, match="takes \\['images'\\]"):
            runner.infer({"x": np.zeros((1, 4), np.float32)})
        with pytest.raises(SubtuneError, match="data type"):
            runner.infer({"images": np.zeros((1, 4), np.float64)})


def test_missing_or_broken_model_files(tmp_path):
    with pytest.raises(SubtuneError, match="not found"):
        OnnxrtRunner(SessionFromOnnx(tmp_path / "absent.onnx")).activate()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(SubtuneError, match="could not load"):
        OnnxrtRunner(SessionFromOnnx(broken)).activate()


def test_unknown_provider_name():
    with pytest.raises(SubtuneError, match="expected one of cpu, cuda, tensorrt"):
        providers_for("vulkan")


@pytest.mark.parametrize("provider, ep", [("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")])
def test_missing_gpu_provider_says_what_to_install(provider, ep):
    if ep in ort.get_available_providers():
        pytest.skip(f"{ep} is available here")
    with pytest.raises(SubtuneError, match="onnxruntime-gpu"):
        providers_for(provider)


@pytest.mark.gpu
@pytest.mark.parametrize("provider, ep", [("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")])
def test_gpu_provider_matches_cpu(affine, provider, ep):
    if ep not in ort.get_available_providers():
        pytest.skip(f"{ep} not available (ONNX Runtime here offers {ort.get_available_providers()})")
    model, w, b = affine
    x = np.ones((3, 4), np.float32)
    if provider == "tensorrt" and not _tensorrt_libraries_load():
        # ORT lists its TensorRT provider whenever the provider library is there; without TensorRT's own
        # libraries it would fall back to CUDA: subtune refuses that instead of timing the wrong provider.
        with pytest.raises(SubtuneError, match="could not start .*libnvinfer"):
            OnnxrtRunner(SessionFromOnnx(model, provider=provider)).activate()
        return
    with OnnxrtRunner(SessionFromOnnx(model, provider=provider)) as runner:
        assert runner.describe()["execution_providers"][0] == ep
        np.testing.assert_allclose(runner.infer({"images": x})["y"], x @ w + b, rtol=1e-3, atol=1e-3)


def test_runner_for_file_picks_the_runtime_by_suffix(affine_path, tmp_path):
    assert isinstance(runner_for_file(affine_path), OnnxrtRunner)
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"\0")
    assert isinstance(runner_for_file(engine, cuda_graph=True), TrtRunner)
    other = tmp_path / "model.txt"
    other.write_text("x")
    with pytest.raises(SubtuneError, match="expected a .onnx model"):
        runner_for_file(other)
    with pytest.raises(SubtuneError, match="TensorRT engines"):
        runner_for_file(affine_path, cuda_graph=True)
    with pytest.raises(SubtuneError, match="--provider applies to .onnx"):
        runner_for_file(engine, provider="cuda")
    with pytest.raises(SubtuneError, match="not found"):
        runner_for_file(tmp_path / "absent.onnx")


def test_shared_thread_pool_serves_several_sessions(affine_path):
    """In a fresh process: ONNX Runtime fixes the global pool at the first session."""
    code = textwrap.dedent(f"""
        import numpy as np
        from subtune.errors import SubtuneError
        from subtune.runtimes.onnxruntime import OnnxrtRunner, SessionFromOnnx, use_shared_thread_pool
        try:
            OnnxrtRunner(SessionFromOnnx({str(affine_path)!r}, shared_pool=True)).activate()
            raise SystemExit("expected an error before the pool is set")
        except SubtuneError as e:
            assert "use_shared_thread_pool" in str(e)
        use_shared_thread_pool(2)
        use_shared_thread_pool(2)  # the same size again is fine
        runners = [OnnxrtRunner(SessionFromOnnx({str(affine_path)!r}, shared_pool=True)) for _ in range(3)]
        x = np.ones((2, 4), np.float32)
        outs = []
        for r in runners:
            with r:
                outs.append(r.infer({{"images": x}})["y"])
                assert r.describe()["intra_op_threads"] == "shared pool of 2"
        assert all(np.array_equal(o, outs[0]) for o in outs)
        try:
            use_shared_thread_pool(3)
            raise SystemExit("expected an error when resizing the pool")
        except SubtuneError as e:
            assert "already has 2 threads" in str(e)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def _tensorrt_libraries_load() -> bool:
    import ctypes

    for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def test_a_provider_that_fell_back_is_refused(affine):
    """What ORT does when a listed provider cannot start (seen on an H200 with onnxruntime-gpu and no
    TensorRT): the session runs on the next provider. A real CPU session stands in for it here."""
    from subtune.runtimes.onnxruntime import check_provider_started

    session = ort.InferenceSession(affine[0], providers=["CPUExecutionProvider"])
    check_provider_started(session, ["CPUExecutionProvider"])  # started as asked: no error
    with pytest.raises(SubtuneError, match="lists TensorrtExecutionProvider but it could not start .*libnvinfer"):
        check_provider_started(session, [("TensorrtExecutionProvider", {}), "CUDAExecutionProvider"])
    with pytest.raises(SubtuneError, match="fell back to CPUExecutionProvider"):
        check_provider_started(session, ["CUDAExecutionProvider", "CPUExecutionProvider"])
