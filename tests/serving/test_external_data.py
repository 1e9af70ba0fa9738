"""`subtune serve` on a graph with external data (model.onnx + model.onnx.data, as a compile over
2 GiB writes it): the weights file travels into the repository under the name the graph records,
the real tritonserver loads it there, and its answers equal ONNX Runtime called directly on the
pair. A small graph forced to external data takes the same path as a 3 GB one; the 3 GB one
(ResNet-50 with 100 tasks) is the slow test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.serving.conftest import group_processes, start_serve_command

RTOL = 1e-6

# ONNX Runtime called directly on the pair, in a fresh process (a 3 GB graph's session is gone
# before the server loads its own copy): the outputs for each batch of seeded images, as .npz.
_DIRECT = textwrap.dedent("""
    import sys
    import numpy as np
    import onnxruntime as ort
    graph, size, out, batches = sys.argv[1], int(sys.argv[2]), sys.argv[3], [int(b) for b in sys.argv[4:]]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(graph, sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    arrays = {}
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, 3, size, size), dtype=np.float32)
        arrays.update({f"{batch}/{n}": y for n, y in zip(names, session.run(names, {"images": x}))})
    np.savez(out, names=np.array(names), **arrays)
""")


def serve_and_compare(graph: Path, size: int, batches: list[int], http, workdir: Path, model: str) -> int:
    """Serve `graph` with `subtune serve`, ask for every output at each batch size over HTTP, and
    compare with ONNX Runtime called directly; stop the server (SIGTERM) and leave no process.
    Returns the number of outputs compared."""
    direct = workdir / "direct.npz"
    done = subprocess.run([sys.executable, "-c", _DIRECT, str(graph), str(size), str(direct), *map(str, batches)],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = np.load(direct)
    names = [str(n) for n in reference["names"]]
    proc, ports, text = start_serve_command(graph, workdir / "server.log", 900, "--ready-timeout", "600")
    server_pid, compared = None, 0
    try:
        assert f"models {model}" in text, text
        server_pid = int(text.split("(pid ")[1].split(")")[0])
        client = http.InferenceServerClient(f"127.0.0.1:{ports[0]}", connection_timeout=60, network_timeout=600)
        try:
            for batch in batches:
                x = np.random.default_rng(batch).standard_normal((batch, 3, size, size), dtype=np.float32)
                inp = http.InferInput("images", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                result = client.infer(model, [inp])
                for name in names:
                    got, want = result.as_numpy(name), reference[f"{batch}/{name}"]
                    assert got.shape == want.shape and got.size > 0
                    assert np.abs(got - want).max() / np.abs(want).max() <= RTOL, (name, batch)
                    compared += 1
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert group_processes(server_pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if server_pid is not None:
            for pid in group_processes(server_pid):
                os.kill(pid, signal.SIGKILL)
    return compared


def test_serve_answers_from_a_graph_with_external_data(serve_env, tritonclient_modules, tmp_path):
    import subtune
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", seed=0)
    _, bb = base.build()
    tasks = [synthetic_task(base, "t1", [2, 3], seed=1, backbone=bb),
             synthetic_task(base, "t2", [6, 7], seed=2, backbone=bb)]
    out = tmp_path / "pair.onnx"
    result = subtune.compile(base, tasks, out, image_size=32, external_data=True, report=False,
                             check_tensorrt=False)
    assert result.files == [out, out.with_name("pair.onnx.data")]
    assert serve_and_compare(out, 32, [1, 3], tritonclient_modules[0], tmp_path, "pair") == 6


@pytest.mark.slow
def test_serve_answers_from_a_100_task_resnet50_graph(serve_env, tritonclient_modules, tmp_path):
    """ResNet-50 @224 with 100 synthetic tasks on blocks 13-14 (3.0 GB of weights, external data),
    compiled with subtune-compile in a fresh process, served by `subtune serve`: every one of the
    101 outputs at batch 1 and 2 equals ONNX Runtime on the pair. Run here (2 cores, loaded):
    compile 89 s with peak memory 5.0 GiB; serving it and the comparison took 18 s (docs/scale.md)."""
    from subtune.formats import save_base, save_task
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    if os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") < 16 * 2**30:
        pytest.skip("needs a machine with 16 GiB of memory or more")
    base = make_base("torchvision:resnet50", seed=0)
    _, bb = base.build()
    save_base(tmp_path / "base.pt", base)
    paths = []
    for i in range(100):
        paths.append(tmp_path / f"t{i}.pt")
        save_task(paths[-1], synthetic_task(base, f"t{i}", [13, 14], seed=1000 + i, backbone=bb))
    del base, bb
    graph = tmp_path / "m100.onnx"
    done = subprocess.run([sys.executable, "-m", "subtune.cli", "compile", str(tmp_path / "base.pt"), *map(str, paths),
                           "-o", str(graph)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert graph.with_name("m100.onnx.data").stat().st_size > 2**31
    assert serve_and_compare(graph, 224, [1, 2], tritonclient_modules[0], tmp_path, "m100") == 2 * 101
