"""Graphs with external data (a compile over 2 GiB is written as model.onnx + model.onnx.data)
everywhere a graph goes: `subtune inspect`, `subtune-bench MODEL`, `subtune triton-repo`. A small
graph forced to external data takes the same paths (the real server: tests/serving; the C++
library: tests/cpp)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import subtune
from subtune.cli import main
from subtune.models import make_base
from subtune.runtimes.onnxruntime import session_from_bytes
from subtune.synthetic import synthetic_task


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A compiled, verified two-task tiny_resnet graph written as a pair (external data forced)."""
    base = make_base("subtune:tiny_resnet", seed=0)
    _, bb = base.build()
    tasks = [synthetic_task(base, "t1", [2, 3], seed=1, backbone=bb), synthetic_task(base, "t2", [6, 7], seed=2,
                                                                                      backbone=bb)]
    out = tmp_path_factory.mktemp("pair") / "pair.onnx"
    result = subtune.compile(base, tasks, out, image_size=16, external_data=True, report=False)
    assert result.files == [out, out.with_name("pair.onnx.data")] and result.verified
    return out


def test_the_pair_holds_its_weights_in_the_data_file(pair):
    model = onnx.load(str(pair), load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) > 10 and all(len(t.raw_data) < 1024 for t in model.graph.initializer)
    assert pair.stat().st_size < 100_000 < pair.with_name("pair.onnx.data").stat().st_size


def test_inspect_names_the_weights_file_and_refuses_a_pair_moved_apart(pair, tmp_path, capsys):
    assert main(["inspect", str(pair), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    data = pair.with_name("pair.onnx.data")
    assert info["external_data"] == {"pair.onnx.data": data.stat().st_size}
    assert 0.9 < info["weights_bytes"] / data.stat().st_size < 1.1 and info["outputs"] == ["base", "t1", "t2"]
    assert info["subtune.verified"] is True
    alone = tmp_path / "pair.onnx"
    alone.write_bytes(pair.read_bytes())  # the .onnx without its weights
    assert main(["inspect", str(alone)]) == 1
    err = capsys.readouterr().err
    assert "pair.onnx.data, which is not beside it" in err and err.count("\n") == 1


def test_bench_times_the_pair(pair, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", str(pair), "--batch", "1,4", "--threads", "1", "--json", str(out), "--warmup", "1",
                 "--iters", "3", "--repeats", "2"]) == 0
    data = json.loads(out.read_text())
    assert [t["batch"] for t in data["timings"]] == [1, 4]
    assert all(t["median_ms"] > 0 for t in data["timings"])


def test_triton_repo_copies_the_weights_file_where_the_model_finds_it(pair, tmp_path):
    from subtune.serving.repository import RepoOptions, write_repository

    for backend in ("python", "onnxruntime"):
        repo = write_repository(pair, tmp_path / backend, RepoOptions(name="m", backend=backend))
        version = repo.path / "m" / "1"
        assert {"model.onnx", "pair.onnx.data"} <= {p.name for p in version.iterdir()}
        x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
        served = session_from_bytes(str(version / "model.onnx")).run(None, {"images": x})
        direct = session_from_bytes(str(pair)).run(None, {"images": x})
        for a, b in zip(served, direct):
            np.testing.assert_array_equal(a, b)
