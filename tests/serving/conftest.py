"""Fixtures for serving tests: a tiny compiled graph (subtune:tiny_resnet, two tasks with class
names and recorded preprocessing), its python-backend repository, and ONE real tritonserver for the
whole session (free ports on 127.0.0.1, bounded readiness wait, stopped by PID, its log attached
to the failure report)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

PREPROCESS = {"image_size": [32, 32], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channels": 3}
T1_CLASSES = ["tops", "bottoms", "footwear", "bags"]


@pytest.fixture(scope="session")
def serve_env():
    from subtune.errors import SubtuneError
    from subtune.serving.environment import find_environment

    try:
        return find_environment()
    except SubtuneError as e:
        pytest.skip(f"serve environment missing: {e}")


@pytest.fixture(scope="session")
def tritonclient_modules():
    http = pytest.importorskip("tritonclient.http", reason="tritonclient[all] is not installed (pip install 'tritonclient[all]')")
    grpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[all] is not installed (pip install 'tritonclient[all]')")
    return http, grpc


def _compile_tiny(path, task_select: bool = False):
    """The two-task tiny_resnet graph: t1 (blocks 2-3, 4 named classes), t2 (3-4, 10)."""
    from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
    from subtune.compiler.plan import Plan
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", seed=0)
    _, backbone = base.build()
    t1 = synthetic_task(base, "t1", [2, 3], num_classes=4, seed=1, backbone=backbone)
    t2 = synthetic_task(base, "t2", [3, 4], seed=2, backbone=backbone)
    t1.classes = list(T1_CLASSES)
    for t in (t1, t2):
        t.meta["preprocess"] = dict(PREPROCESS)
    plan = compile_plan(Plan(base, [t1, t2]), CompileOptions(verify=False, check_tensorrt=False,
                                                             task_select=task_select))
    path.write_bytes(serialize(plan))
    return path


@pytest.fixture(scope="session")
def tiny_graph(tmp_path_factory):
    """A compiled two-task tiny_resnet graph: t1 (blocks 2-3, 4 named classes), t2 (3-4, 10)."""
    return _compile_tiny(tmp_path_factory.mktemp("graph") / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_select_graph(tmp_path_factory):
    """The same tasks as tiny_graph compiled with --task-select (second input `tasks`, bool [batch, 2])."""
    return _compile_tiny(tmp_path_factory.mktemp("graph") / "tiny_select.onnx", task_select=True)


@pytest.fixture(scope="session")
def ort_session(tiny_graph):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(tiny_graph), sess_options=opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def repo(tiny_graph, tmp_path_factory):
    from subtune.serving.repository import RepoOptions, write_repository

    import shutil

    root = tmp_path_factory.mktemp("repo")
    repo = write_repository(tiny_graph, root / "models", RepoOptions(name="tiny", preprocess=True, max_batch_size=8))
    # the same graph with a 100 ms batching window: requests sent together are merged for certain
    write_repository(tiny_graph, root / "other", RepoOptions(name="tiny_wait", queue_delay_us=100_000))
    shutil.move(str(root / "other" / "tiny_wait"), str(repo.path / "tiny_wait"))
    return repo


def start_serve_command(model, log_path, ready_s: float, *flags: str):
    """`subtune serve MODEL` on free ports, read until its banner says how to stop it (at most
    `ready_s` seconds). Returns (process, [http, grpc, metrics] ports, the banner); the caller stops
    the process. A banner without "tritonserver ready" fails with what it printed and the log."""
    import subprocess
    import sys
    import time

    from subtune.serving.server import free_port

    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "subtune.cli", "serve", str(model), "--http-port", str(ports[0]),
           "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--log", str(log_path), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline and not any("SIGTERM stops it" in line for line in lines):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    text = "".join(lines)
    if "tritonserver ready" not in text:
        log = log_path.read_text() if log_path.exists() else ""
        err = proc.stderr.read() if proc.poll() is not None else ""
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        pytest.fail(f"subtune serve did not get ready in {ready_s} s: {text}{err}{log[-3000:]}")
    return proc, ports, text


def running_server(repo_path, serve_env, tmp_path_factory, name: str):
    """A tritonserver on `repo_path` (127.0.0.1, free ports, its log in a temporary folder) for a
    fixture to yield from: started, yielded, stopped, and checked gone."""
    from subtune.serving.server import ServerOptions, TritonServer

    log_path = tmp_path_factory.mktemp(f"{name}-log") / "tritonserver.log"
    srv = TritonServer(repo_path, ServerOptions(ready_timeout_s=90, log_path=log_path), environment=serve_env)
    srv.start()
    yield srv
    srv.stop()
    assert srv.process.poll() is not None, f"tritonserver {srv.pid} still running after stop"


@pytest.fixture(scope="session")
def server(serve_env, repo, tmp_path_factory):
    """The session's one tritonserver on the repository (127.0.0.1, free ports)."""
    yield from running_server(repo.path, serve_env, tmp_path_factory, "triton")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing serving test carries the tail of the server's log."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        srv = item.funcargs.get("server") if hasattr(item, "funcargs") else None
        if srv is not None:
            report.sections.append(("tritonserver log (tail)", srv.log_text(limit=8000)))


@pytest.fixture(scope="session")
def http_client(server, tritonclient_modules):
    client = tritonclient_modules[0].InferenceServerClient(server.http_url, connection_timeout=30, network_timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="session")
def grpc_client(server, tritonclient_modules):
    client = tritonclient_modules[1].InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def group_processes(pgid: int) -> list[int]:
    """PIDs whose process group is `pgid` (the server and its backend stubs), zombies left out."""
    from subtune.serving.server import live_group_members

    return live_group_members(pgid)
