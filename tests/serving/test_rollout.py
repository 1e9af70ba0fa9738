"""`subtune rollout` against a real tritonserver under load: a task added, a task retrained, a task
removed and a rollback, each while 8 clients send requests, with zero failed requests and every
answer checked (its base output equals ONNX Runtime on the same image with the version that
answered, named by Triton's `model_version`); bad rollouts refused before the server is touched,
leaving every file of the repository as it was (by hash); a version whose load fails in the
server leaves the old one serving, again with zero failed requests.

One repository and one server for the module: three graph models (`life` with its image
ensemble, `fault`, `guard`) on free ports of 127.0.0.1, tiny graphs (subtune:tiny_resnet,
synthetic tasks).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.serving.conftest import PREPROCESS, T1_CLASSES, running_server

CONCURRENCY = 8
MAX_REQUESTS_PER_CLIENT = 20_000
LOAD_LIMIT_S = 120.0  # no load runs longer, whatever happens
RTOL = 1e-6


# --------------------------------------------------------------------------- graphs and repository


def _compile(tasks, path: Path, base=None, input_size=None) -> Path:
    from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
    from subtune.compiler.plan import Plan

    plan = compile_plan(Plan(base, tasks, input_size=input_size), CompileOptions(verify=False, check_tensorrt=False))
    path.write_bytes(serialize(plan))
    return path


@pytest.fixture(scope="module")
def graphs(tiny_graph, tmp_path_factory):
    """v1 (the session's tiny graph: t1 blocks 2-3 with 4 named classes, t2 blocks 3-4), then
    add (+ t3 on block 4), replace (t2 retrained), remove (t2 gone), and two that must be refused:
    another base, another input size."""
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    folder = tmp_path_factory.mktemp("rollout-graphs")
    base = make_base("subtune:tiny_resnet", seed=0)
    _, backbone = base.build()

    def task(name, blocks, seed, classes=10, on=base, bb=backbone):
        t = synthetic_task(on, name, blocks, num_classes=classes, seed=seed, backbone=bb)
        t.meta["preprocess"] = dict(PREPROCESS)
        if name == "t1":
            t.classes = list(T1_CLASSES)
        return t

    t1, t2, t3 = task("t1", [2, 3], 1, 4), task("t2", [3, 4], 2), task("t3", [4], 3)
    t2_retrained = task("t2", [3, 4], 22)
    other = make_base("subtune:tiny_resnet", seed=7)
    _, other_bb = other.build()
    small = task("t1", [2, 3], 1, 4)
    small.meta["preprocess"] = {**PREPROCESS, "image_size": [40, 40]}
    return {
        "v1": tiny_graph,
        "add": _compile([t1, t2, t3], folder / "add.onnx", base),
        "replace": _compile([t1, t2_retrained, t3], folder / "replace.onnx", base),
        "remove": _compile([t1, t3], folder / "remove.onnx", base),
        "other_base": _compile([task("t1", [2, 3], 1, 4, other, other_bb)], folder / "other_base.onnx", other),
        "other_input": _compile([small], folder / "other_input.onnx", base, input_size=(40, 40)),
    }


@pytest.fixture(scope="module")
def rollout_repo(tiny_graph, tmp_path_factory):
    """`life` (with life_preprocess and life_ensemble), `fault` and `guard`, each serving version 1
    of the tiny graph; `guard` in the layout repositories had before versions (no version policy,
    label files beside config.pbtxt), which a rollout must still read."""
    from subtune.serving.repository import RepoOptions, write_repository

    root = tmp_path_factory.mktemp("rollout-repo")
    repo = root / "models"
    write_repository(tiny_graph, repo, RepoOptions(name="life", preprocess=True))
    for name in ("fault", "guard"):
        write_repository(tiny_graph, root / name, RepoOptions(name=name))
        shutil.move(str(root / name / name), str(repo / name))
    cfg = repo / "guard" / "config.pbtxt"
    text = cfg.read_text()
    policy = text[text.index("version_policy {"):text.index("input {")]
    history = text[text.rindex("parameters {", 0, text.index('"served_versions"')):]
    history = history[:history.index("}\n}\n") + 4]
    cfg.write_text(text.replace(policy, "").replace(history, "").replace('"1/labels_t1.txt"', '"labels_t1.txt"'))
    shutil.move(str(repo / "guard" / "1" / "labels_t1.txt"), str(repo / "guard" / "labels_t1.txt"))
    return repo


@pytest.fixture(scope="module")
def rollout_server(serve_env, rollout_repo, tmp_path_factory):
    yield from running_server(rollout_repo, serve_env, tmp_path_factory, "rollout")


@pytest.fixture
def server(rollout_server):
    """For the conftest hook that attaches the server's log to a failing test."""
    return rollout_server


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def _png(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (36, 44, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


class Outputs:
    """ONNX Runtime's outputs of each version folder's graph, computed on demand and kept."""

    def __init__(self, model_folder: Path):
        self.folder, self.sessions, self.cache = model_folder, {}, {}

    def __call__(self, version: int, key, x: np.ndarray) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        if (version, key) not in self.cache:
            if version not in self.sessions:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1
                self.sessions[version] = ort.InferenceSession(str(self.folder / str(version) / "model.onnx"), opts,
                                                              providers=["CPUExecutionProvider"])
            s = self.sessions[version]
            names = [o.name for o in s.get_outputs()]
            self.cache[(version, key)] = dict(zip(names, s.run(names, {"images": x})))
        return self.cache[(version, key)]


class Load:
    """CONCURRENCY clients sending requests back to back until stopped (bounded in count and
    time): `tensors` threads send 1-2 images to the graph model over HTTP or gRPC, the others
    PNG bytes to the image ensemble. Every answer is kept for checking afterwards."""

    def __init__(self, server, model: str, tensors: int = CONCURRENCY, ensemble: str | None = None):
        self.server, self.model, self.ensemble = server, model, ensemble
        self.stop_event = threading.Event()
        self.records: list[dict] = []
        self.lock = threading.Lock()
        kinds = ["http" if i % 2 else "grpc" for i in range(tensors)] + ["ensemble"] * (CONCURRENCY - tensors)
        self.threads = [threading.Thread(target=self._client, args=(i, k), daemon=True) for i, k in enumerate(kinds)]
        self.began = time.monotonic()
        for t in self.threads:
            t.start()

    def _client(self, i: int, kind: str) -> None:
        import tritonclient.grpc as grpc
        import tritonclient.http as http

        module = grpc if kind == "grpc" else http
        url = self.server.grpc_url if kind == "grpc" else self.server.http_url
        client = module.InferenceServerClient(url) if kind == "grpc" else \
            http.InferenceServerClient(url, connection_timeout=30, network_timeout=30)
        try:
            for n in range(MAX_REQUESTS_PER_CLIENT):
                if self.stop_event.is_set() or time.monotonic() - self.began > LOAD_LIMIT_S:
                    break
                key = (i, n % 3)
                began = time.monotonic()
                try:
                    if kind == "ensemble":
                        blob = _png(100 * i + n % 3)
                        inp = http.InferInput("image_bytes", [1, 1], "BYTES")
                        inp.set_data_from_numpy(np.array([blob], dtype=np.object_).reshape(1, 1))
                        r = client.infer(self.ensemble, [inp])
                        version = int(r.get_response()["model_version"])
                        names = [o["name"] for o in r.get_response()["outputs"]]
                    else:
                        x = _images(1 + n % 2, seed=1000 * i + n % 3)
                        inp = module.InferInput("images", list(x.shape), "FP32")
                        inp.set_data_from_numpy(x)
                        r = client.infer(self.model, [inp], client_timeout=30) if kind == "grpc" else \
                            client.infer(self.model, [inp], timeout=30_000_000)
                        resp = r.get_response()
                        version = int(resp.model_version if kind == "grpc" else resp["model_version"])
                        names = [o.name for o in resp.outputs] if kind == "grpc" else [o["name"] for o in resp["outputs"]]
                        key = (i, n % 3, 1 + n % 2)
                    rec = {"kind": kind, "key": key, "ok": True, "version": version, "t": began,
                           "end": time.monotonic(), "outputs": {o: r.as_numpy(o) for o in names}}
                except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                    rec = {"kind": kind, "key": key, "ok": False, "error": f"{type(e).__name__}: {e}"[:300],
                           "t": began, "end": time.monotonic()}
                    time.sleep(0.02)
                with self.lock:
                    self.records.append(rec)
        finally:
            client.close()

    def versions_seen_after(self, t: float) -> set[int]:
        with self.lock:
            return {r["version"] for r in self.records if r["ok"] and r["t"] >= t and r["kind"] != "ensemble"}

    def wait_for_version(self, version: int, since: float, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while version not in self.versions_seen_after(since):
            assert time.monotonic() < deadline, f"no client was answered by version {version} within {timeout} s"
            time.sleep(0.05)

    def stop(self) -> list[dict]:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"
        return self.records


def _check_answers(records: list[dict], outputs: Outputs, ensemble_reference=None) -> Counter:
    """Every answer: no failure; a tensor answer's outputs equal ONNX Runtime's with the version
    that answered (base and every task it returned); an image-ensemble answer's base output
    equals ONNX Runtime's on the locally decoded image (the same in every version here), and each
    task it returned equals that task in some version served. Returns answers per version."""
    failed = [r for r in records if not r["ok"]]
    assert not failed, f"{len(failed)} of {len(records)} requests failed, first: {failed[0]['error']}"
    seen = Counter()
    versions = sorted({r["version"] for r in records if r["kind"] != "ensemble"})
    for r in records:
        if r["kind"] == "ensemble":
            i, image = r["key"]
            x = ensemble_reference(100 * i + image)
            refs = [outputs(v, ("png", 100 * i + image), x) for v in versions]
            for name, got in r["outputs"].items():
                matches = [ref[name] for ref in refs if name in ref and ref[name].shape == got.shape]
                assert matches and min(float(np.abs(got - m).max() / np.abs(m).max()) for m in matches) <= RTOL, name
            seen["ensemble"] += 1
            continue
        i, image, batch = r["key"]
        x = _images(batch, seed=1000 * i + image)
        ref = outputs(r["version"], (i, image, batch), x)
        assert set(r["outputs"]) == set(ref), (r["version"], sorted(r["outputs"]), sorted(ref))
        for name, got in r["outputs"].items():
            assert got.shape == ref[name].shape
            assert float(np.abs(got - ref[name]).max() / np.abs(ref[name]).max()) <= RTOL, (r["version"], name)
        seen[r["version"]] += 1
    return seen


def _decoded(tmp_path: Path):
    """subtune's own image loading of the PNG a client sends: what the ensemble must equal."""
    from subtune.training.data import load_dataset

    cache = {}

    def get(seed: int) -> np.ndarray:
        if seed not in cache:
            folder = tmp_path / f"png{seed}"
            folder.mkdir()
            (folder / "x.png").write_bytes(_png(seed))
            ds = load_dataset(f"images:{folder}", "pool", image_size=PREPROCESS["image_size"],
                              mean=PREPROCESS["mean"], std=PREPROCESS["std"])
            cache[seed] = ds.images.numpy()
        return cache[seed]

    return get


# --------------------------------------------------------------------------- the lifecycle


def test_add_replace_remove_and_roll_back_under_load(rollout_server, rollout_repo, graphs, tmp_path):
    """Each change while 8 clients run (6 on tensors over HTTP and gRPC, 2 on image bytes through
    the ensemble): zero failed requests, every answer checked against the version that gave it."""
    import subtune

    url = rollout_server.http_url
    load = Load(rollout_server, "life", tensors=6, ensemble="life_ensemble")
    steps = []
    try:
        time.sleep(0.5)
        for graph, replace, version in (("add", (), 2), ("replace", ("t2",), 3), ("remove", (), 4)):
            began = time.monotonic()
            lines: list[str] = []
            result = subtune.rollout(rollout_repo, graphs[graph], name="life", url=url, replace=replace,
                                     on_progress=lines.append)
            assert result.serving == version and result.served_before == version - 1, lines
            load.wait_for_version(version, began)
            steps.append((graph, result))
        # the rollback through the command line, as an operator runs it
        began = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "subtune.cli", "rollout", str(rollout_repo), "--rollback",
                               "--name", "life", "--url", url], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "life: version 4 (serving) -> version 3" in done.stdout and "life serves version 3" in done.stdout
        load.wait_for_version(3, began)
        time.sleep(0.3)
    finally:
        records = load.stop()
    (add, r_add), (_, r_replace), (_, r_remove) = steps
    assert r_add.comparison.named("added") == ["t3"] and r_add.comparison.named("same") == ["base", "t1", "t2"]
    assert r_replace.comparison.named("replaced") == ["t2"] and r_replace.comparison.named("same") == ["base", "t1", "t3"]
    assert r_remove.comparison.named("removed") == ["t2"] and r_remove.comparison.named("same") == ["base", "t1", "t3"]
    for _, r in steps:
        assert r.server_max_difference <= 1e-6 and r.retired
        assert [o.bit_identical for o in r.comparison.outputs if o.name == "base"] == [True]
    assert r_add.ensemble_outputs == ["base", "t1", "t2", "t3"] and r_remove.ensemble_outputs == ["base", "t1", "t3"]

    seen = _check_answers(records, Outputs(rollout_repo / "life"), _decoded(tmp_path))
    assert all(seen[v] >= 5 for v in (1, 2, 3, 4)) and seen["ensemble"] >= 5, seen
    last = [r["version"] for r in sorted(records, key=lambda r: r["t"]) if r["kind"] != "ensemble"][-10:]
    assert set(last) == {3}, last  # rolled back: version 3 answers at the end
    # the repository records what served, in order; every version's files stay
    from subtune.serving.versions import open_graph_model

    model = open_graph_model(rollout_repo, "life")
    assert (model.served, model.history) == (3, [1, 2, 3]) and model.versions_on_disk() == [1, 2, 3, 4]
    assert rollout_server.process.poll() is None


# --------------------------------------------------------------------------- refusals


def test_refusals_change_nothing(rollout_server, rollout_repo, graphs, tmp_path):
    """Another base, another input, a corrupt file, a retrained task not named, a task named that
    is not in both, no earlier version, a wrong server: one line each, before anything is written
    (every file of the repository keeps its hash) and the served version answers as before."""
    import subtune
    from subtune.errors import SubtuneError

    url = rollout_server.http_url
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(graphs["add"].read_bytes()[:50_000])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a graph at all")
    cases = [
        (dict(new_graph=graphs["other_base"]), "another base"),
        (dict(new_graph=graphs["other_input"]), "takes inputs images FP32 [3, 40, 40]"),
        (dict(new_graph=truncated), "not a readable ONNX file"),
        (dict(new_graph=garbage), "not a readable ONNX file"),
        (dict(new_graph=graphs["replace"]), "task t2 of"),  # t2 retrained, not named
        (dict(new_graph=graphs["add"], replace=["t3"]), "--replace t3: a replaced task is in both versions"),
        (dict(new_graph=graphs["add"], replace=["t1"]), "--replace t1: task t1"),  # named, but unchanged
        (dict(rollback=True), "nothing to roll back to"),
        (dict(new_graph=graphs["add"], url="127.0.0.1:1"), "no Triton server answers at 127.0.0.1:1"),
    ]
    before = _hashes(rollout_repo)
    # the graph version 1 already serves (other file name, same bytes): nothing to do, nothing written
    same = tmp_path / "same.onnx"
    shutil.copyfile(graphs["v1"], same)
    result = subtune.rollout(rollout_repo, same, name="guard", url=url)
    assert (result.action, result.serving, result.comparison) == ("none", 1, None)
    assert _hashes(rollout_repo) == before
    x = _images(2, seed=5)
    import tritonclient.http as http

    client = http.InferenceServerClient(url, network_timeout=30)
    inp = http.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    served = client.infer("guard", [inp]).as_numpy("base")
    try:
        for kwargs, needle in cases:
            kwargs = {"url": url, **kwargs}
            with pytest.raises(SubtuneError) as info:
                subtune.rollout(rollout_repo, kwargs.pop("new_graph", None), name="guard", **kwargs)
            message = str(info.value)
            assert needle in message and "\n" not in message, message
            assert _hashes(rollout_repo) == before, f"the refusal {message!r} changed the repository"
            r = client.infer("guard", [inp])
            assert r.get_response()["model_version"] == "1" and np.array_equal(r.as_numpy("base"), served)
    finally:
        client.close()
    # the command: one line on stderr, exit 1, no traceback
    done = subprocess.run([sys.executable, "-m", "subtune.cli", "rollout", str(rollout_repo), str(graphs["other_base"]),
                           "--name", "guard", "--url", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert "another base" in done.stderr and "Traceback" not in done.stderr
    assert _hashes(rollout_repo) == before


def test_dry_run_prints_the_comparison_and_writes_nothing(rollout_repo, graphs, tmp_path, capsys):
    from subtune.cli import main

    before = _hashes(rollout_repo)
    assert main(["rollout", str(rollout_repo), str(graphs["replace"]), "--name", "guard", "--replace", "t2",
                 "--dry-run", "--url", "127.0.0.1:1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"guard: version 1 (serving) -> version 2 ({graphs['replace']})"
    assert "16 check images (random pixels, normalised as the tasks were trained), batches 1 and 16" in out[1]
    rows = {line.split()[0]: line.split()[1] for line in out[2:-1]}
    assert rows == {"base": "same", "t1": "same", "t2": "replaced", "t3": "added"}, out
    assert out[-1] == "dry run: nothing written, no server contacted"
    # check images from a data set instead, prepared as the tasks were trained
    for seed in range(3):
        (tmp_path / f"{seed}.png").write_bytes(_png(seed))
    assert main(["rollout", str(rollout_repo), str(graphs["add"]), "--name", "guard", "--dry-run",
                 "--data", f"images:{tmp_path}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"checked on 3 check images (3 from images:{tmp_path}), batches 1 and 3" in out[1]
    assert _hashes(rollout_repo) == before


def test_a_server_without_model_control_is_refused(serve_env, rollout_repo, graphs):
    """A server started with Triton's default (model control none) cannot load versions: refused
    in one line before anything is written, naming how to start one that can."""
    import subtune
    from subtune.errors import SubtuneError
    from subtune.serving.server import ServerOptions, TritonServer

    before = _hashes(rollout_repo)
    with TritonServer(rollout_repo, ServerOptions(ready_timeout_s=90, model_control="none"),
                      environment=serve_env) as fixed:
        with pytest.raises(SubtuneError, match="takes no load requests") as info:
            subtune.rollout(rollout_repo, graphs["add"], name="guard", url=fixed.http_url)
        assert "subtune serve REPO" in str(info.value) and "\n" not in str(info.value)
    assert _hashes(rollout_repo) == before


# --------------------------------------------------------------------------- what only the server finds


FAILING_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        raise pb_utils.TritonModelException("this graph cannot be loaded here (the fault the test plants)")

    def execute(self, requests):
        return []
'''


def test_a_version_the_server_cannot_load_leaves_the_old_one_serving(rollout_server, rollout_repo, graphs, tmp_path,
                                                                    monkeypatch):
    """The checks pass, the server's load fails (the version's model.py raises in initialize, as a
    graph the server's runtime rejects would): the rollout fails in one line with the server's
    reason, 8 clients see zero failed requests, all answered by version 1, and the repository is
    as it was. The same for a load that takes longer than --timeout (the new version may answer
    until the old one is back). The same rollout then succeeds once the fault is gone."""
    import subtune
    import subtune.serving.models as served_models
    from subtune.errors import SubtuneError

    url = rollout_server.http_url
    failing = tmp_path / "model.py"
    failing.write_text(FAILING_MODEL)
    before = _hashes(rollout_repo)
    load = Load(rollout_server, "fault")
    try:
        time.sleep(0.5)
        monkeypatch.setattr(served_models, "GRAPH_MODEL", failing)
        with pytest.raises(SubtuneError) as info:
            subtune.rollout(rollout_repo, graphs["add"], name="fault", url=url)
        message = str(info.value)
        assert "the server could not load fault version 2" in message and "the fault the test plants" in message
        assert "version 1 of fault serves as before and the repository is as it was" in message
        assert "\n" not in message
        assert _hashes(rollout_repo) == before
        time.sleep(0.5)
        monkeypatch.undo()
        # a load that takes longer than --timeout: the old version is put back once the load ends
        timed_out_at = time.monotonic()
        with pytest.raises(SubtuneError) as info:
            subtune.rollout(rollout_repo, graphs["add"], name="fault", url=url, timeout=0.01)
        message = str(info.value)
        assert "did not finish loading fault within 0.01 s" in message and "version 1 of fault serves as before" in message
        assert _hashes(rollout_repo) == before
        time.sleep(0.5)
        began = time.monotonic()
        result = subtune.rollout(rollout_repo, graphs["add"], name="fault", url=url)
        assert result.serving == 2
        load.wait_for_version(2, began)
    finally:
        records = load.stop()
    seen = _check_answers(records, Outputs(rollout_repo / "fault"))
    assert seen[1] >= 20 and seen[2] >= 1, seen
    # only version 1 answered until the timed-out load (the failed load never served), and again after it
    assert {r["version"] for r in records if r["ok"] and r["end"] < timed_out_at} == {1}
    assert {r["version"] for r in records if r["ok"] and began - 0.5 > r["t"] > timed_out_at + 3} <= {1}


def test_external_weights_roll_out_with_their_graph(rollout_server, rollout_repo, tmp_path):
    """A graph whose weights live in a .data file beside it (compiles over 2 GiB): the version
    folder holds both, the server loads the pair and answers as the graph does, bit-identical to
    the served version (same tasks)."""
    import onnx

    import subtune

    source = rollout_repo / "guard" / "1" / "model.onnx"
    big = tmp_path / "big.onnx"
    onnx.save(onnx.load(str(source)), str(big), save_as_external_data=True, all_tensors_to_one_file=True,
              location="big.onnx.data", size_threshold=1024)
    result = subtune.rollout(rollout_repo, big, name="guard", url=rollout_server.http_url)
    assert result.serving == 2 and result.written[:2] == ["model.onnx", "big.onnx.data"]
    assert {"model.py", "labels_t1.txt"} <= set(result.written)
    assert set(result.comparison.named("same")) == {"base", "t1", "t2"}
    assert all(o.bit_identical for o in result.comparison.outputs) and result.server_max_difference == 0.0
    assert (rollout_repo / "guard" / "2" / "big.onnx.data").read_bytes() == (tmp_path / "big.onnx.data").read_bytes()
    # the layout from before versions: labels moved into the version folder from here on
    cfg = (rollout_repo / "guard" / "config.pbtxt").read_text()
    assert '"2/labels_t1.txt"' in cfg and "specific" in cfg
