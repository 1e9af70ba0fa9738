"""A --task-select graph (issue 20) served by a real tritonserver: the python-backend model builds
each request's task mask from the outputs it names, and Triton's dynamic batcher merges requests
for different tasks into one ONNX Runtime run (seen in Triton's statistics and in the model's own
log line per run); each answer equals ONNX Runtime on the graph with every task asked for, the
base bit for bit; an explicit `tasks` input chooses per image; a bad `tasks` input fails its
request with one line and the server keeps serving; the image ensemble asks the graph for the
outputs the client named; a rollout from the plain graph to the task-select graph of the same
tasks and back (and from a task-select repository to the plain graph) under load, with zero
failed requests.

One server for the module (127.0.0.1, free ports), tiny graphs (subtune:tiny_resnet, the
session's two synthetic tasks t1 and t2)."""

from __future__ import annotations

import io
import re
import shutil
import threading
import time
import urllib.request
import json

import numpy as np
import pytest

from tests.serving.conftest import PREPROCESS, T1_CLASSES, running_server

RTOL = 1e-6
TASKS = ["t1", "t2"]
WAIT_US = 1_000_000  # `sel_wait`: requests sent together are merged for certain (no preferred batch sizes)


def _images(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32), dtype=np.float32)


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def select_session(tiny_select_graph):
    return _session(tiny_select_graph)


def every_task(session, x: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX Runtime on the task-select graph with every task asked for on every image: the reference."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": x, "tasks": np.ones((len(x), len(TASKS)), bool)})))


def _close(got: np.ndarray, want: np.ndarray) -> float:
    assert got.size > 0 and got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape)
    assert not np.isnan(got).any() and not np.isnan(want).any()
    return float(np.abs(got - want).max() / np.abs(want).max())


def _with_parameter(config_path, key: str, value: str) -> None:
    with open(config_path, "a") as f:
        f.write(f'parameters {{\n  key: "{key}"\n  value {{\n    string_value: "{value}"\n  }}\n}}\n')


@pytest.fixture(scope="module")
def select_repo(tiny_graph, tiny_select_graph, tmp_path_factory):
    """sel (+ sel_preprocess, sel_ensemble): the task-select graph as `subtune triton-repo --preprocess`
    writes it; sel_wait: the same with a 1 s batching window and no preferred batch sizes; sel_loose:
    its `tasks` input declared [-1] by hand, so the model's own check of a mask is reached; life (+ its
    Triton ensemble): the plain graph of the same tasks, for the rollout. The task-select models log
    one line per run (parameter log_task_rows)."""
    from subtune.serving.repository import RepoOptions, write_repository

    root = tmp_path_factory.mktemp("select-repo")
    repo = root / "models"
    write_repository(tiny_select_graph, repo, RepoOptions(name="sel", preprocess=True))
    for name, graph, opts in (("sel_wait", tiny_select_graph, RepoOptions(name="sel_wait", queue_delay_us=WAIT_US)),
                              ("sel_loose", tiny_select_graph, RepoOptions(name="sel_loose")),
                              ("life", tiny_graph, RepoOptions(name="life", preprocess=True))):
        write_repository(graph, root / name, opts)
        for model in (root / name).iterdir():
            shutil.move(str(model), str(repo / model.name))
    wait = repo / "sel_wait" / "config.pbtxt"
    wait.write_text(re.sub(r"  preferred_batch_size: \d+\n", "", wait.read_text()))
    loose = repo / "sel_loose" / "config.pbtxt"
    loose.write_text(loose.read_text().replace('name: "tasks"\n  data_type: TYPE_BOOL\n  dims: 2\n',
                                               'name: "tasks"\n  data_type: TYPE_BOOL\n  dims: -1\n'))
    for name in ("sel", "sel_wait", "sel_loose"):
        _with_parameter(repo / name / "config.pbtxt", "log_task_rows", "1")
    return repo


@pytest.fixture(scope="module")
def select_server(serve_env, select_repo, tmp_path_factory):
    yield from running_server(select_repo, serve_env, tmp_path_factory, "select")


@pytest.fixture
def server(select_server):
    """For the conftest hook that attaches the server's log to a failing test."""
    return select_server


def _stats(server, model: str) -> dict:
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/stats", timeout=5) as r:
        s = json.loads(r.read())["model_stats"][0]
    return {"inference_count": s["inference_count"], "execution_count": s["execution_count"]}


def _run_lines(server, since: int) -> list[str]:
    """The graph model's log lines (log_task_rows) written after byte `since` of the server's log."""
    text = server.log_path.read_bytes()[since:].decode("utf-8", "replace")
    return re.findall(r"subtune: one run of [^\"\n]*", text)


def _log_size(server) -> int:
    return server.log_path.stat().st_size


def _wait_for_lines(server, since: int, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while len(lines := _run_lines(server, since)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines


# --------------------------------------------------------------------------- selection by output


@pytest.mark.parametrize("sizes", [(1, 1, 1, 1), (2, 3, 1, 2)], ids=["1-image requests", "mixed sizes"])
def test_requests_for_different_tasks_share_one_run(sizes, select_server, tritonclient_modules, select_session):
    """Four clients at once: one asks for t1, one for t2, one for nothing (every output), one for base
    only. The dynamic batcher merges them into one run (Triton's statistics: one execution; the
    model's log: the images per task it computed), and each answer carries exactly what was asked,
    equal to ONNX Runtime on the full graph with every task: the tasks within 1e-6, not NaN, the
    base bit for bit."""
    http = tritonclient_modules[0]
    asks = [["t1"], ["t2"], None, ["base"]]
    xs = [_images(n, seed=10 * len(sizes) + i + sum(sizes)) for i, n in enumerate(sizes)]
    before, since = _stats(select_server, "sel_wait"), _log_size(select_server)
    client = http.InferenceServerClient(select_server.http_url, concurrency=len(asks), network_timeout=30)
    try:
        pending = []
        for x, ask in zip(xs, asks):
            inp = http.InferInput("images", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            pending.append(client.async_infer("sel_wait", [inp], outputs=[http.InferRequestedOutput(n) for n in ask]
                                              if ask else None))
        results = [p.get_result(timeout=30) for p in pending]
    finally:
        client.close()
    after = _stats(select_server, "sel_wait")
    assert after["inference_count"] - before["inference_count"] == sum(sizes)
    assert after["execution_count"] - before["execution_count"] == 1, "the requests did not share one run"
    # t1 asked by the first client and by the one that asked for nothing, t2 likewise
    assert _wait_for_lines(select_server, since, 1) == [
        f"subtune: one run of {sum(sizes)} image(s) from 4 request(s); images per task: "
        f"t1 {sizes[0] + sizes[2]}, t2 {sizes[1] + sizes[2]}"]
    for x, ask, result in zip(xs, asks, results):
        want = every_task(select_session, x)
        returned = sorted(o["name"] for o in result.get_response()["outputs"])
        assert returned == sorted(ask or ["base", *TASKS])
        for name in returned:
            got = result.as_numpy(name)
            if name == "base":
                assert np.array_equal(got, want["base"]), "the base depends on what else was asked"
            else:
                assert _close(got, want[name]) <= RTOL, name


def test_the_graph_model_computes_only_the_named_task(select_server, tritonclient_modules, select_session):
    """One request naming one task: the run computes that task alone (the model's log line), over
    HTTP and gRPC, with the answer equal to the full graph's."""
    http, grpc = tritonclient_modules
    x = _images(3, seed=40)
    want = every_task(select_session, x)
    for module, url in ((http, select_server.http_url), (grpc, select_server.grpc_url)):
        client = module.InferenceServerClient(url)
        try:
            since = _log_size(select_server)
            inp = module.InferInput("images", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            r = client.infer("sel", [inp], outputs=[module.InferRequestedOutput("t2")])
            assert r.as_numpy("t1") is None and r.as_numpy("base") is None
            assert _close(r.as_numpy("t2"), want["t2"]) <= RTOL
            assert _wait_for_lines(select_server, since, 1) == [
                "subtune: one run of 3 image(s) from 1 request(s); images per task: t1 0, t2 3"]
        finally:
            client.close()


def test_explicit_mask_chooses_per_image(select_server, tritonclient_modules, select_session):
    """A client may send `tasks` itself: it says which images compute which task; the outputs it
    names say what comes back (a named task is NaN where its mask entry is false; a task not named
    is not computed, whatever the mask)."""
    http = tritonclient_modules[0]
    client = http.InferenceServerClient(select_server.http_url, network_timeout=30)
    x = _images(3, seed=50)
    want = every_task(select_session, x)
    mask = np.array([[True, False], [False, True], [False, False]])

    def ask(outputs):
        inp = http.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        m = http.InferInput("tasks", list(mask.shape), "BOOL")
        m.set_data_from_numpy(mask)
        return client.infer("sel", [inp, m], outputs=[http.InferRequestedOutput(n) for n in outputs] if outputs else None)

    try:
        for outputs in (None, ["base", "t1", "t2"]):
            r = ask(outputs)
            assert np.array_equal(r.as_numpy("base"), want["base"])
            for column, task in enumerate(TASKS):
                rows = mask[:, column]
                assert np.isnan(r.as_numpy(task)[~rows]).all()
                assert _close(r.as_numpy(task)[rows], want[task][rows]) <= RTOL
        since = _log_size(select_server)
        r = ask(["t1"])
        assert r.as_numpy("t2") is None and np.isnan(r.as_numpy("t1")[1:]).all()
        assert _close(r.as_numpy("t1")[:1], want["t1"][:1]) <= RTOL
        assert _wait_for_lines(select_server, since, 1) == [
            "subtune: one run of 3 image(s) from 1 request(s); images per task: t1 1, t2 0"]
    finally:
        client.close()


def _expect_error(fn, *needles) -> str:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message.strip() and "Traceback" not in message, message
    assert all(n in message for n in needles), message
    return message


def test_bad_mask_gets_one_line_errors_and_server_keeps_serving(select_server, tritonclient_modules,
                                                                select_session):
    """A `tasks` input of the wrong width, dtype or number of rows fails its request in one line,
    over HTTP and gRPC (Triton checks what the configuration declares; the model checks the rest,
    reached here through a configuration declaring any width); the server keeps serving."""
    http, grpc = tritonclient_modules
    good = _images(2, seed=60)
    want = every_task(select_session, good)

    def request(module, client, model, mask, dtype):
        inp = module.InferInput("images", list(good.shape), "FP32")
        inp.set_data_from_numpy(good)
        m = module.InferInput("tasks", list(mask.shape), dtype)
        m.set_data_from_numpy(mask)
        return lambda: client.infer(model, [inp, m])

    for module, url in ((http, select_server.http_url), (grpc, select_server.grpc_url)):
        client = module.InferenceServerClient(url)
        try:
            def still_serving():
                inp = module.InferInput("images", list(good.shape), "FP32")
                inp.set_data_from_numpy(good)
                for model in ("sel", "sel_loose"):
                    r = client.infer(model, [inp], outputs=[module.InferRequestedOutput("t1")])
                    assert _close(r.as_numpy("t1"), want["t1"]) <= RTOL

            _expect_error(request(module, client, "sel", np.ones((2, 3), bool), "BOOL"),
                          "'tasks'", "Expected [-1,2], got [2,3]")
            still_serving()
            _expect_error(request(module, client, "sel", np.ones((2, 2), np.int32), "INT32"),
                          "'tasks'", "INT32", "BOOL")
            still_serving()
            _expect_error(request(module, client, "sel", np.ones((1, 2), bool), "BOOL"),
                          "batch size does not match")
            still_serving()
            # the model's own check (the configuration here lets any width through)
            _expect_error(request(module, client, "sel_loose", np.ones((2, 3), bool), "BOOL"),
                          "input 'tasks' must be BOOL [2, 2]", "found bool of shape [2, 3]", "t1, t2")
            still_serving()
        finally:
            client.close()


# --------------------------------------------------------------------------- the image ensemble


def _png(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (36, 44, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _decoded(blobs: list[bytes], folder) -> np.ndarray:
    """subtune's own image loading of the PNGs: what the ensemble's preprocessing must equal."""
    from subtune.training.data import load_dataset

    folder.mkdir()
    for i, b in enumerate(blobs):
        (folder / f"{i}.png").write_bytes(b)
    ds = load_dataset(f"images:{folder}", "pool", image_size=PREPROCESS["image_size"], mean=PREPROCESS["mean"],
                      std=PREPROCESS["std"])
    return ds.images.numpy()[[ds.ids.index(f"{i}.png") for i in range(len(blobs))]]


def test_ensemble_selects_the_task_named(select_server, tritonclient_modules, select_session, tmp_path):
    """PNG bytes to sel_ensemble naming one output: the graph model computes that task only (its log
    line), and the answer equals subtune's own image loading plus ONNX Runtime with every task; naming
    nothing gives every output; class names come back for t1; an undecodable image fails alone."""
    http, grpc = tritonclient_modules
    blobs = [_png(1), _png(2), _png(3)]
    want = every_task(select_session, _decoded(blobs, tmp_path / "png"))
    for module, url in ((http, select_server.http_url), (grpc, select_server.grpc_url)):
        client = module.InferenceServerClient(url)
        try:
            inp = module.InferInput("image_bytes", [len(blobs), 1], "BYTES")
            inp.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
            since = _log_size(select_server)
            r = client.infer("sel_ensemble", [inp], outputs=[module.InferRequestedOutput("t2")])
            assert r.as_numpy("t1") is None and r.as_numpy("base") is None
            assert _close(r.as_numpy("t2"), want["t2"]) <= RTOL
            assert _wait_for_lines(select_server, since, 1) == [
                "subtune: one run of 3 image(s) from 1 request(s); images per task: t1 0, t2 3"]
            r = client.infer("sel_ensemble", [inp])
            assert np.array_equal(r.as_numpy("base"), want["base"])
            for task in TASKS:
                assert _close(r.as_numpy(task), want[task]) <= RTOL
            top = client.infer("sel_ensemble", [inp], outputs=[module.InferRequestedOutput("t1", class_count=1)])
            assert [row[0].decode().split(":")[2] for row in top.as_numpy("t1")] == \
                [T1_CLASSES[i] for i in want["t1"].argmax(1)]
            bad = module.InferInput("image_bytes", [1, 1], "BYTES")
            bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_).reshape(1, 1))
            _expect_error(lambda: client.infer("sel_ensemble", [bad]), "not a decodable image")
            assert _close(client.infer("sel_ensemble", [inp], outputs=[module.InferRequestedOutput("t1")])
                          .as_numpy("t1"), want["t1"]) <= RTOL
        finally:
            client.close()


# --------------------------------------------------------------------------- rollout


class SingleTaskLoad:
    """Clients sending requests back to back until stopped (bounded): over HTTP one asks for t1,
    over gRPC one asks for t2, one asks for nothing; every answer is kept with the version that gave
    it, to be checked afterwards."""

    LIMIT_S = 120.0

    def __init__(self, server, model: str):
        self.server, self.model = server, model
        self.stop_event, self.lock, self.records = threading.Event(), threading.Lock(), []
        self.began = time.monotonic()
        self.threads = [threading.Thread(target=self._client, args=(i, proto, ask), daemon=True)
                        for i, (proto, ask) in enumerate((("http", ["t1"]), ("grpc", ["t2"]), ("http", None)))]
        for t in self.threads:
            t.start()

    def _client(self, i: int, proto: str, ask) -> None:
        import tritonclient.grpc as grpc
        import tritonclient.http as http

        module = grpc if proto == "grpc" else http
        client = module.InferenceServerClient(self.server.grpc_url if proto == "grpc" else self.server.http_url)
        try:
            n = 0
            while not self.stop_event.is_set() and time.monotonic() - self.began < self.LIMIT_S and n < 20_000:
                n += 1
                seed = 1000 * i + n % 3
                x = _images(1 + n % 2, seed)
                inp = module.InferInput("images", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                try:
                    r = client.infer(self.model, [inp], outputs=[module.InferRequestedOutput(o) for o in ask]
                                     if ask else None)
                    resp = r.get_response()
                    version = int(resp.model_version if proto == "grpc" else resp["model_version"])
                    names = [o.name for o in resp.outputs] if proto == "grpc" else [o["name"] for o in resp["outputs"]]
                    rec = {"ok": True, "x": x, "ask": ask, "version": version, "t": time.monotonic(),
                           "outputs": {o: r.as_numpy(o) for o in names}}
                except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                    rec = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
                    time.sleep(0.02)
                with self.lock:
                    self.records.append(rec)
        finally:
            client.close()

    def wait_for_version(self, version: int, since: float, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if any(r["ok"] and r["version"] == version and r["t"] >= since for r in self.records):
                    return
            assert time.monotonic() < deadline, f"no client was answered by version {version} within {timeout} s"
            time.sleep(0.05)

    def stop(self) -> list[dict]:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"
        return self.records


def _check_load(records: list[dict], references: dict) -> set[int]:
    """No failure; each answer carries what was asked, equal to ONNX Runtime with the version that
    answered (a task-select version: with every task asked for), not NaN. Returns the versions seen."""
    failed = [r for r in records if not r["ok"]]
    assert not failed, f"{len(failed)} of {len(records)} requests failed, first: {failed[0]['error']}"
    for r in records:
        want = references[r["version"]](r["x"])
        assert sorted(r["outputs"]) == sorted(r["ask"] or want)
        for name, got in r["outputs"].items():
            assert _close(got, want[name]) <= RTOL, (r["version"], name)
    return {r["version"] for r in records}


def test_rollout_plain_to_task_select_and_back_under_load(select_server, select_repo, tiny_graph, tiny_select_graph,
                                                          select_session):
    """`life` serves the plain graph; it rolls out to the task-select graph of the same tasks and back
    (--rollback) while clients ask for single tasks: zero failed requests, every answer equal to the
    version that gave it; the comparison holds the base bit-identical and checks the new graph's
    base under several masks; the configuration gains the optional `tasks` input and loses it again."""
    import subtune

    plain = _session(tiny_graph)
    names = [o.name for o in plain.get_outputs()]
    references = {1: lambda x: dict(zip(names, plain.run(names, {"images": x}))),
                  2: lambda x: every_task(select_session, x)}
    url = select_server.http_url
    load = SingleTaskLoad(select_server, "life")
    lines: list[str] = []
    try:
        time.sleep(0.3)
        began = time.monotonic()
        forward = subtune.rollout(select_repo, tiny_select_graph, name="life", url=url, on_progress=lines.append)
        assert forward.serving == 2
        load.wait_for_version(2, began)
        assert 'name: "tasks"' in (select_repo / "life" / "config.pbtxt").read_text()
        began = time.monotonic()
        back = subtune.rollout(select_repo, name="life", rollback=True, url=url, on_progress=lines.append)
        assert back.serving == 1
        load.wait_for_version(1, began)
        time.sleep(0.2)
    finally:
        records = load.stop()
    assert 'name: "tasks"' not in (select_repo / "life" / "config.pbtxt").read_text()
    assert _check_load(records, references) == {1, 2}
    ts = forward.comparison.task_select
    assert ts["served"] is False and ts["new"] is True and ts["masks"] == ["every task", "none", "one task per image"]
    assert back.comparison.task_select == {"served": True, "new": False}
    for r in (forward, back):
        assert r.comparison.named("same") == ["base", "t1", "t2"] and not r.comparison.same_layout
        assert [o.bit_identical for o in r.comparison.outputs if o.name == "base"] == [True]
        assert r.server_max_difference <= RTOL and r.retired
    text = "\n".join(lines)
    assert "task selection: the new version chooses tasks per image" in text
    assert "life_ensemble is Triton's ensemble, which asks life for every output" in text


def test_rollout_from_a_task_select_repository(select_server, select_repo, tiny_graph, tritonclient_modules,
                                               select_session, tmp_path):
    """`sel` (with its python image ensemble) rolls out to the plain graph of the same tasks: the
    ensemble keeps answering, now from the plain graph; then back."""
    import subtune

    http = tritonclient_modules[0]
    url = select_server.http_url
    blobs = [_png(7), _png(8)]
    want = every_task(select_session, _decoded(blobs, tmp_path / "png"))
    client = http.InferenceServerClient(url, network_timeout=30)

    def ensemble_t1():
        inp = http.InferInput("image_bytes", [len(blobs), 1], "BYTES")
        inp.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
        return client.infer("sel_ensemble", [inp], outputs=[http.InferRequestedOutput("t1")]).as_numpy("t1")

    try:
        assert _close(ensemble_t1(), want["t1"]) <= RTOL
        result = subtune.rollout(select_repo, tiny_graph, name="sel", url=url)
        assert result.serving == 2 and result.ensemble_outputs == ["base", "t1", "t2"]
        assert 'name: "tasks"' not in (select_repo / "sel" / "config.pbtxt").read_text()
        assert _close(ensemble_t1(), want["t1"]) <= 1e-4  # the plain graph's t1: within the compile tolerance
        back = subtune.rollout(select_repo, name="sel", rollback=True, url=url)
        assert back.serving == 1 and _close(ensemble_t1(), want["t1"]) <= RTOL
    finally:
        client.close()


def test_dry_run_between_plain_and_task_select(tiny_graph, tiny_select_graph, tmp_path, capsys):
    """Without a server: `subtune rollout --dry-run` from the plain graph to the task-select graph
    prints the comparison and the change of task selection; with Triton's onnxruntime backend, which
    feeds the graph what clients send, the same change is refused in one line (every client would
    have to send the mask); neither writes a byte."""
    from subtune.cli import main
    from subtune.serving.repository import RepoOptions, write_repository

    def hashes(folder):
        return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    python_repo = write_repository(tiny_graph, tmp_path / "py", RepoOptions(name="m")).path
    before = hashes(python_repo)
    assert main(["rollout", str(python_repo), str(tiny_select_graph), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "m: version 1 (serving) -> version 2" in out and "  base  same      bit-identical" in out
    assert "task selection: the new version chooses tasks per image (the served one computes every task)" in out
    assert "its base bit-identical under the masks every task, none, one task per image" in out
    assert hashes(python_repo) == before

    ort_repo = write_repository(tiny_graph, tmp_path / "ort", RepoOptions(name="m", backend="onnxruntime")).path
    before = hashes(ort_repo)
    assert main(["rollout", str(ort_repo), str(tiny_select_graph), "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "takes a task mask (tasks)" in err and "onnxruntime backend feeds the graph what clients send" in err
    assert hashes(ort_repo) == before


def test_configuration_for_a_version_with_another_number_of_tasks(tiny_select_graph, tmp_path):
    """Rolling out a task-select graph with a task more: the configuration's `tasks` input takes the new
    graph's width (the images input stays as served, hand edits included)."""
    import dataclasses

    from subtune.serving.graph import Tensor, read_graph
    from subtune.serving.repository import RepoOptions, write_repository
    from subtune.serving.versions import open_graph_model

    repo = write_repository(tiny_select_graph, tmp_path / "r", RepoOptions(name="m")).path
    config = repo / "m" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "images"\n', 'name: "images"\n  reshape {\n    shape: 3\n'
                                                 '    shape: 32\n    shape: 32\n  }\n'))  # a hand edit
    served = read_graph(tiny_select_graph)
    three = dataclasses.replace(
        served, inputs=[served.inputs[0], Tensor("tasks", "BOOL", [3])],
        outputs=[*served.outputs, Tensor("t3", "FP32", [10])],
        metadata={**served.metadata, "subtune.task_select": {**served.task_select, "columns": ["t1", "t2", "t3"]}})
    model = open_graph_model(repo)
    cfg, _ = model.config_serving(2, three, [1, 2])
    assert [(i.name, list(i.dims), i.optional) for i in cfg.input] == [("images", [3, 32, 32], False),
                                                                       ("tasks", [3], True)]
    assert cfg.input[0] == model.model.config.input[0] and list(cfg.input[0].reshape.shape) == [3, 32, 32]
    assert [o.name for o in cfg.output] == ["base", "t1", "t2", "t3"]


def test_a_task_select_graph_whose_base_follows_the_mask_is_refused(tiny_select_graph, tmp_path):
    """The rollout's own check of a task-select graph: the compiled graph passes; the same graph with
    its base shifted by the number of tasks asked for is refused in one line."""
    import onnx
    from onnx import helper, numpy_helper

    from subtune.errors import SubtuneError
    from subtune.serving.compare import check_task_selection, run_graph
    from subtune.serving.graph import read_graph

    images = _images(4, seed=70)
    good = read_graph(tiny_select_graph)
    masks, worst = check_task_selection(good, "good", images, run_graph(good, images, [4])[0], 1e-4)
    assert masks == ["every task", "none", "one task per image"] and worst <= 1e-4

    model = onnx.load(str(tiny_select_graph))
    producer = next(n for n in model.graph.node if "base" in n.output)
    producer.output[list(producer.output).index("base")] = "base_before"
    model.graph.initializer.append(numpy_helper.from_array(np.array(1e-3, np.float32), "shift_per_task"))
    model.graph.node.extend([helper.make_node("Cast", ["tasks"], ["tasks_float"], to=onnx.TensorProto.FLOAT),
                             helper.make_node("ReduceSum", ["tasks_float"], ["tasks_asked"], keepdims=0),
                             helper.make_node("Mul", ["tasks_asked", "shift_per_task"], ["shift"]),
                             helper.make_node("Add", ["base_before", "shift"], ["base"])])
    onnx.save(model, str(tmp_path / "bad.onnx"))
    bad = read_graph(tmp_path / "bad.onnx")
    with pytest.raises(SubtuneError, match="the base output of bad.onnx changes with the task mask") as info:
        check_task_selection(bad, "bad.onnx", images, run_graph(bad, images, [4])[0], 1e-4)
    assert "\n" not in str(info.value)
