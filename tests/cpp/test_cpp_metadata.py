"""The C++ library reads the compiled graph's metadata against the one definition of its keys
(subtune/graph_metadata.schema.json, embedded at build time): it refuses and accepts the same graphs
as Python's subtune.graph_metadata.decode, with the same line."""

from __future__ import annotations

import json

import onnx
import pytest

from subtune import graph_metadata
from tests.cpp.conftest import ROOT, run
from tests.metadata_fixtures import missing_key, newer_schema, rewrite_metadata



def _metadata(path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _tasks(src) -> list[dict]:
    return json.loads(_metadata(src)["subtune.tasks"])


def _without_kind(src, dst):
    tasks = _tasks(src)
    del tasks[0]["kind"]
    return rewrite_metadata(src, dst, set={"subtune.tasks": tasks})


def _kind(src, dst, kind):
    tasks = _tasks(src)
    tasks[1]["kind"] = kind
    return rewrite_metadata(src, dst, set={"subtune.tasks": tasks})


# Graphs every reader must refuse: the compiled graph with one thing broken.
REFUSED = {
    "newer schema": lambda src, dst: newer_schema(src, dst),
    "missing subtune.outputs": lambda src, dst: missing_key(src, dst, "subtune.outputs"),
    "missing subtune.tasks": lambda src, dst: missing_key(src, dst, "subtune.tasks"),
    "missing subtune.base_fingerprint": lambda src, dst: missing_key(src, dst, "subtune.base_fingerprint"),
    "missing subtune.verified": lambda src, dst: missing_key(src, dst, "subtune.verified"),
    "schema 0": lambda src, dst: rewrite_metadata(src, dst, set={"subtune.schema": 0}),
    "schema 1.5": lambda src, dst: rewrite_metadata(src, dst, set={"subtune.schema": 1.5}),
    "a key from a later schema than the stamp": lambda src, dst: rewrite_metadata(
        src, dst, set={"subtune.schema": 1, "subtune.task_select": {"input": "tasks"}}),
    "verified not JSON": lambda src, dst: rewrite_metadata(src, dst, set={"subtune.verified": "yes"}),
    "verified an integer": lambda src, dst: rewrite_metadata(src, dst, set={"subtune.verified": 1}),
    "input_size of one number": lambda src, dst: rewrite_metadata(src, dst, set={"subtune.input_size": [32]}),
    "an output name that is a number": lambda src, dst: rewrite_metadata(
        src, dst, set={"subtune.outputs": ["base", 7, "coarse4"]}),
    "a task without kind": _without_kind,
    "a task of an unknown kind": lambda src, dst: _kind(src, dst, "lora"),
    "preprocessing without std": lambda src, dst: rewrite_metadata(
        src, dst, set={"subtune.preprocess": {"fashion10": {"image_size": [32, 32], "mean": [0.1]}}}),
    "precision not one of the known": lambda src, dst: rewrite_metadata(src, dst, set={"subtune.precision": "fp64"}),
    # Values quoted as Python quotes them: repr's choice of quotes, json.dumps's \u escapes.
    "precision with a quote and an accent": lambda src, dst: rewrite_metadata(
        src, dst, set={"subtune.precision": "it's é"}),
    "verified an object with an accent": lambda src, dst: rewrite_metadata(
        src, dst, set={"subtune.verified": {"a": "é\n", "b": [1.5, None]}}),
}

# Graphs every reader must accept: written before subtune.schema existed (version 1), or by a newer
# writer that added an optional key this definition does not know.
ACCEPTED = {
    "no subtune.schema (version 1)": lambda src, dst: missing_key(src, dst, "subtune.schema"),
    "an unknown key": lambda src, dst: rewrite_metadata(src, dst, set={"subtune.future_key": {"x": [1, "é"]}}),
}


def test_the_library_embeds_the_repositorys_definition(cpp_build):
    r = run([cpp_build.model_test, "definition"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == (ROOT / "subtune" / "graph_metadata.schema.json").read_text()


def test_the_library_reports_the_schema(cpp_build, cpp_graph, tmp_path):
    import numpy as np

    from tests.cpp.conftest import SIZE

    (tmp_path / "in.f32").write_bytes(np.zeros((1, 3, *SIZE), np.float32).tobytes())
    r = run([cpp_build.model_test, "run", cpp_graph, tmp_path / "in.f32", 1, tmp_path])
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "meta.json").read_text())
    # a plain graph is stamped with the lowest schema that describes it; the library knows the newest
    assert got["schema"] == json.loads(_metadata(cpp_graph)["subtune.schema"]) == 1
    assert got["newest_schema"] == graph_metadata.schema_version()


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_in_one_line_as_python_refuses_it(cpp_build, cpp_graph, tmp_path, case):
    graph = REFUSED[case](cpp_graph, tmp_path / "model.onnx")
    with pytest.raises(graph_metadata.GraphMetadataError) as python:
        graph_metadata.decode(_metadata(graph), str(graph))
    out = tmp_path / "out.json"
    r = run([cpp_build.infer, graph, "--json", out])
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.splitlines() == [f"subtune-infer: error: {python.value}"], r.stderr
    assert r.stdout == "" and not out.exists()


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepted_as_python_accepts_it(cpp_build, cpp_graph, tmp_path, case):
    import numpy as np

    from tests.cpp.conftest import SIZE

    graph = ACCEPTED[case](cpp_graph, tmp_path / "model.onnx")
    decoded = graph_metadata.decode(_metadata(graph), str(graph))
    (tmp_path / "in.f32").write_bytes(np.zeros((2, 3, *SIZE), np.float32).tobytes())
    r = run([cpp_build.model_test, "run", graph, tmp_path / "in.f32", 2, tmp_path])
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "meta.json").read_text())
    assert got["schema"] == decoded["subtune.schema"]
    assert got["outputs"] == decoded["subtune.outputs"]
