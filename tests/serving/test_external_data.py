"""`subtune serve` on a graph with external data (model.onnx + model.onnx.data, as a compile over
2 GiB writes it): the weights file travels into the repository under the name the graph records,
the real tritonserver loads it there, and its answers equal ONNX Runtime called directly on the
pair. A small graph forced to external data takes the same path as a 3 GB one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.serving.conftest import group_processes

RTOL = 1e-6


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    import subtune
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", seed=0)
    _, bb = base.build()
    tasks = [synthetic_task(base, "t1", [2, 3], seed=1, backbone=bb),
             synthetic_task(base, "t2", [6, 7], seed=2, backbone=bb)]
    out = tmp_path_factory.mktemp("pair") / "pair.onnx"
    result = subtune.compile(base, tasks, out, image_size=32, external_data=True, report=False,
                             check_tensorrt=False)
    assert result.files == [out, out.with_name("pair.onnx.data")]
    return out


def test_serve_answers_from_a_graph_with_external_data(serve_env, tritonclient_modules, pair, tmp_path):
    import onnxruntime as ort

    from subtune.serving.server import free_port

    http = tritonclient_modules[0]
    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "subtune.cli", "serve", str(pair), "--http-port", str(ports[0]),
           "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--log", str(tmp_path / "server.log")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server_pid = None
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("SIGTERM stops it" in line for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        assert "tritonserver ready" in text and "models pair" in text, \
            text + (proc.stderr.read() if proc.poll() is not None else "") + (tmp_path / "server.log").read_text()
        server_pid = int(text.split("(pid ")[1].split(")")[0])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        direct = ort.InferenceSession(str(pair), sess_options=opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in direct.get_outputs()]
        client = http.InferenceServerClient(f"127.0.0.1:{ports[0]}", connection_timeout=30, network_timeout=30)
        try:
            for batch in (1, 3):
                x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
                inp = http.InferInput("images", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                result = client.infer("pair", [inp])
                for name, want in zip(names, direct.run(names, {"images": x})):
                    got = result.as_numpy(name)
                    assert got.shape == want.shape and got.size > 0
                    assert np.abs(got - want).max() / np.abs(want).max() <= RTOL, (name, batch)
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert group_processes(server_pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if server_pid is not None:
            for pid in group_processes(server_pid):
                os.kill(pid, signal.SIGKILL)
