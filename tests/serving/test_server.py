"""A real tritonserver (nvidia-pytriton's binary, python backend, the serve environment) serving a
compiled tiny graph: answers equal ONNX Runtime called directly, over HTTP and gRPC, at batch 1
and 4; the image ensemble equals subtune's own image loading plus ONNX Runtime; bad requests get
clear errors and the server keeps serving; a corrupt model fails alone."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from tests.serving.conftest import PREPROCESS, T1_CLASSES, group_processes, start_serve_command

OUTPUTS = ["base", "t1", "t2"]
RTOL = 1e-6


def _images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32), dtype=np.float32)


def _close(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|, after checking the answer is not empty (the python backend's
    numpy-2 failure mode is an empty tensor)."""
    assert got.size > 0, "the server answered with an empty tensor"
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    return float(np.abs(got - want).max() / np.abs(want).max())


def _infer(module, client, x: np.ndarray, outputs=None, model="tiny"):
    inp = module.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    requested = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
    return client.infer(model, [inp], outputs=requested)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("batch", [1, 4])
def test_matches_onnxruntime(protocol, batch, server, tritonclient_modules, http_client, grpc_client, ort_session):
    module = tritonclient_modules[0 if protocol == "http" else 1]
    client = http_client if protocol == "http" else grpc_client
    x = _images(batch, seed=batch)
    result = _infer(module, client, x)
    reference = dict(zip(OUTPUTS, ort_session.run(OUTPUTS, {"images": x})))
    for name in OUTPUTS:
        assert _close(result.as_numpy(name), reference[name]) <= RTOL, name


def test_concurrent_requests_are_batched_and_split_back(server, tritonclient_modules, ort_session):
    """Requests the dynamic batcher merges into one ONNX Runtime run each get their own rows."""
    http = tritonclient_modules[0]
    before = server_stats(server, "tiny_wait")
    client = http.InferenceServerClient(server.http_url, concurrency=8, network_timeout=30)
    try:
        xs = [_images(1 + i % 3, seed=100 + i) for i in range(16)]
        pending = []
        for x in xs:
            inp = http.InferInput("images", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            pending.append(client.async_infer("tiny_wait", [inp]))
        for x, p in zip(xs, pending):
            r = p.get_result(timeout=30)
            ref = ort_session.run(OUTPUTS, {"images": x})
            for name, want in zip(OUTPUTS, ref):
                assert _close(r.as_numpy(name), want) <= RTOL
    finally:
        client.close()
    after = server_stats(server, "tiny_wait")
    runs = after["execution_count"] - before["execution_count"]
    assert after["inference_count"] - before["inference_count"] == sum(len(x) for x in xs)
    assert runs < len(xs), f"{len(xs)} requests took {runs} model runs: the dynamic batcher never merged two"


def server_stats(server, model):
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/stats", timeout=5) as r:
        s = json.loads(r.read())["model_stats"][0]
    return {"inference_count": s["inference_count"], "execution_count": s["execution_count"]}


def test_one_task_output_only(tritonclient_modules, grpc_client, ort_session):
    x = _images(4, seed=7)
    result = _infer(tritonclient_modules[1], grpc_client, x, outputs=["t2"])
    assert result.as_numpy("t2") is not None and result.as_numpy("base") is None and result.as_numpy("t1") is None
    assert _close(result.as_numpy("t2"), ort_session.run(["t2"], {"images": x})[0]) <= RTOL


def test_classification_returns_class_names(tritonclient_modules, http_client, ort_session):
    http = tritonclient_modules[0]
    x = _images(4, seed=9)
    inp = http.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = http_client.infer("tiny", [inp], outputs=[http.InferRequestedOutput("t1", class_count=2)])
    logits = ort_session.run(["t1"], {"images": x})[0]
    rows = result.as_numpy("t1")
    assert rows.shape == (4, 2)
    for row, want in zip(rows, logits):
        entries = [e.decode().split(":") for e in row]  # "score:index:label"
        top = np.argsort(-want)[:2]
        assert [int(i) for _, i, _ in entries] == list(top)
        assert [label for _, _, label in entries] == [T1_CLASSES[i] for i in top]
        assert np.allclose([float(s) for s, _, _ in entries], want[top], rtol=1e-4, atol=1e-5)


def _png(seed: int, size=(48, 40), mode="RGB") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    im = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_ensemble_on_image_bytes(tmp_path, tritonclient_modules, http_client, grpc_client, ort_session):
    """Raw PNG bytes through the ensemble equal subtune's own image loading (the images:DIR data
    source: Pillow decode, RGB, bilinear resize, normalise) plus ONNX Runtime."""
    from subtune.training.data import load_dataset

    blobs = [_png(1), _png(2, size=(20, 60)), _png(3, mode="L"), _png(4, size=(32, 32))]
    for i, b in enumerate(blobs):
        (tmp_path / f"{i}.png").write_bytes(b)
    ds = load_dataset(f"images:{tmp_path}", "pool", image_size=PREPROCESS["image_size"], mean=PREPROCESS["mean"],
                      std=PREPROCESS["std"])
    order = [ds.ids.index(f"{i}.png") for i in range(len(blobs))]
    local = ds.images.numpy()[order]
    reference = dict(zip(OUTPUTS, ort_session.run(OUTPUTS, {"images": local})))
    for module, client in zip(tritonclient_modules, (http_client, grpc_client)):
        inp = module.InferInput("image_bytes", [len(blobs), 1], "BYTES")
        inp.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
        result = client.infer("tiny_ensemble", [inp])
        for name in OUTPUTS:
            assert _close(result.as_numpy(name), reference[name]) <= RTOL, name
        # the ensemble's outputs carry the label files too
        top = client.infer("tiny_ensemble", [inp], outputs=[module.InferRequestedOutput("t1", class_count=1)])
        assert [row[0].decode().split(":")[2] for row in top.as_numpy("t1")] == \
            [T1_CLASSES[i] for i in reference["t1"].argmax(1)]


def _expect_error(fn, *needles):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        fn()
    message = str(info.value).lower()
    assert any(n in message for n in needles), message
    return message


def test_bad_requests_get_clear_errors_and_server_keeps_serving(tritonclient_modules, http_client, grpc_client,
                                                                ort_session):
    http, grpc = tritonclient_modules
    good = _images(2, seed=11)
    want = ort_session.run(OUTPUTS, {"images": good})[0]

    def still_serving():
        assert _close(_infer(http, http_client, good).as_numpy("base"), want) <= RTOL
        assert _close(_infer(grpc, grpc_client, good).as_numpy("base"), want) <= RTOL

    def raw(module, client, name, array, dtype, model="tiny"):
        inp = module.InferInput(name, list(array.shape), dtype)
        inp.set_data_from_numpy(array)
        return lambda: client.infer(model, [inp])

    for module, client in ((http, http_client), (grpc, grpc_client)):
        # wrong shape
        _expect_error(raw(module, client, "images", _images(1)[:, :, :16, :16].copy(), "FP32"), "shape")
        still_serving()
        # wrong dtype
        _expect_error(raw(module, client, "images", good.astype(np.float64), "FP64"), "data-type", "datatype")
        still_serving()
        # missing input (an unknown one instead)
        _expect_error(raw(module, client, "pixels", good, "FP32"), "unexpected inference input", "expected 1 inputs")
        still_serving()
        # batch above the maximum (8)
        _expect_error(raw(module, client, "images", _images(9), "FP32"), "batch-size must be <= 8", "batch size")
        still_serving()
        # garbage image bytes to the ensemble
        garbage = np.array([b"definitely not an image"], dtype=np.object_).reshape(1, 1)
        msg = _expect_error(raw(module, client, "image_bytes", garbage, "BYTES", model="tiny_ensemble"),
                            "not a decodable image")
        assert "unidentifiedimageerror" in msg
        still_serving()
    assert _infer(http, http_client, good).as_numpy("t1").shape == (2, 4)


def test_corrupt_model_fails_alone(serve_env, tiny_graph, tmp_path, tritonclient_modules, ort_session):
    """One model with a broken graph and one from a newer metadata schema: the server reports each
    model's load failure clearly and serves the others; `subtune serve` on the same repository fails with one line and exit 1."""
    import shutil
    import subprocess
    import sys

    from subtune.serving.repository import RepoOptions, write_repository
    from subtune.serving.server import ServerOptions, TritonServer

    root = tmp_path / "repo"
    write_repository(tiny_graph, root, RepoOptions(name="good"))
    write_repository(tiny_graph, tmp_path / "other", RepoOptions(name="broken"))
    shutil.move(str(tmp_path / "other" / "broken"), str(root / "broken"))
    (root / "broken" / "1" / "model.onnx").write_bytes(b"this is not an ONNX graph")
    # the Triton model reads the graph's metadata through the same definition as Python and C++
    from tests.metadata_fixtures import newer_schema

    write_repository(tiny_graph, tmp_path / "other2", RepoOptions(name="newer"))
    shutil.move(str(tmp_path / "other2" / "newer"), str(root / "newer"))
    newer_schema(tiny_graph, root / "newer" / "1" / "model.onnx")

    srv = TritonServer(root, ServerOptions(exit_on_error=False, ready_timeout_s=90), environment=serve_env)
    try:
        srv.start()
        states = {m["name"]: m for m in srv.repository_index()}
        assert states["good"]["state"] == "READY"
        assert states["broken"]["state"] == "UNAVAILABLE"
        assert "INVALID_PROTOBUF" in states["broken"]["reason"] or "Protobuf parsing failed" in states["broken"]["reason"]
        assert "failed to load 'broken'" in srv.error_summary()
        assert states["newer"]["state"] == "UNAVAILABLE"
        from subtune.graph_metadata import schema_version

        assert f"this reader knows schema {schema_version()} at most; upgrade subtune" in states["newer"]["reason"]
        http = tritonclient_modules[0]
        client = http.InferenceServerClient(srv.http_url, network_timeout=30)
        try:
            x = _images(3, seed=5)
            assert _close(_infer(http, client, x, model="good").as_numpy("t2"), ort_session.run(["t2"], {"images": x})[0]) <= RTOL
            _expect_error(lambda: _infer(http, client, x, model="broken"), "no available versions", "unavailable")
        finally:
            client.close()
    finally:
        pid = srv.pid
        srv.close()
    assert group_processes(pid) == [], "tritonserver or a backend stub outlived stop()"

    cmd = [sys.executable, "-m", "subtune.cli", "serve", str(root), "--http-port", "0", "--grpc-port", "1",
           "--metrics-port", "2"]
    bad_port = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad_port.returncode == 1 and "--http-port 0" in bad_port.stderr
    from subtune.serving.server import free_port

    ports = [str(free_port()) for _ in range(3)]
    cmd = [sys.executable, "-m", "subtune.cli", "serve", str(root), "--http-port", ports[0], "--grpc-port", ports[1],
           "--metrics-port", ports[2], "--ready-timeout", "90"]
    began = time.monotonic()
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert "failed to load 'broken'" in lines[0] and "Protobuf parsing failed" in lines[0]
    assert time.monotonic() - began < 120


def test_a_killed_server_leaves_no_shared_memory_behind(serve_env, repo):
    """A crash (SIGKILL to the server and its stubs: the fault runs) leaves the python backend's
    /dev/shm regions behind unless TritonServer removes them; it removes exactly the ones that
    server's processes had mapped."""
    import os

    from subtune.serving.server import ServerOptions, TritonServer, shared_memory_regions

    srv = TritonServer(repo.path, ServerOptions(ready_timeout_s=90), environment=serve_env)
    try:
        srv.start()
        regions = shared_memory_regions(srv.pid)
        assert regions, "the python backend maps its shared memory in /dev/shm"
        others = {f"/dev/shm/{n}" for n in os.listdir("/dev/shm") if n.startswith("triton_")} - regions
        srv.kill()
        assert group_processes(srv.pid) == []
        assert [r for r in regions if os.path.exists(r)] == []
        assert [o for o in others if not os.path.exists(o)] == [], "another server's regions were touched"
    finally:
        srv.stop()


def test_serve_command_prints_endpoints_and_stops_on_sigterm(serve_env, tiny_graph, tmp_path):
    """`subtune serve MODEL.onnx`: ready, endpoints printed, SIGTERM -> clean exit 0, no process left."""
    import os
    import signal
    import urllib.request

    proc, ports, text = start_serve_command(tiny_graph, tmp_path / "server.log", 120)
    try:
        assert f"http://127.0.0.1:{ports[0]}/v2" in text and f"127.0.0.1:{ports[1]}" in text
        # explicit model control by default: the temporary repository is named, with how to roll out into it
        repository = text.split("  repository  ")[1].split()[0]
        assert f"subtune rollout {repository} NEW.onnx --url 127.0.0.1:{ports[0]}" in text
        server_pid = int(text.split("(pid ")[1].split(")")[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/models/tiny/ready", timeout=5) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "tritonserver stopped" in out
        assert group_processes(server_pid) == []
        with pytest.raises(ProcessLookupError):
            os.kill(server_pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_port_in_use_fails_in_one_line(serve_env, repo):
    """The server's own reason (the socket in use) comes back as the error; nothing is left running."""
    import socket

    from subtune.errors import SubtuneError
    from subtune.serving.server import ServerOptions, TritonServer

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        srv = TritonServer(repo.path, ServerOptions(http_port=busy.getsockname()[1], ready_timeout_s=90),
                           environment=serve_env)
        with pytest.raises(SubtuneError, match="already in use") as info:
            srv.start()
    assert "\n" not in str(info.value) and "CUDA" not in str(info.value)
    assert srv.process.poll() is not None and group_processes(srv.pid) == []
    srv.close()
