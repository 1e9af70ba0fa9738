"""The compiled graph's metadata has one definition (subtune/graph_metadata.schema.json); the
compiler writes it and every Python reader holds to it (the Triton model: tests/serving; C++:
tests/cpp)."""

from __future__ import annotations

import json

import pytest

from subtune import graph_metadata
from subtune.errors import SubtuneError
from tests.metadata_fixtures import missing_key, newer_schema, rewrite_metadata


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """A compiled (unverified) two-task tiny_resnet graph with preprocessing and class names."""
    from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
    from subtune.compiler.plan import Plan
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", seed=0)
    _, backbone = base.build()
    t1 = synthetic_task(base, "t1", [2, 3], num_classes=3, seed=1, backbone=backbone)
    t1.classes = ["a", "b", "c"]
    t1.meta["preprocess"] = {"image_size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "channels": 3}
    t2 = synthetic_task(base, "t2", [4], seed=2, backbone=backbone)
    plan = compile_plan(Plan(base, [t1, t2]), CompileOptions(verify=False, check_tensorrt=False))
    path = tmp_path_factory.mktemp("graph") / "g.onnx"
    path.write_bytes(serialize(plan))
    return path


def _props(path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_the_compiler_writes_exactly_the_definition(graph):
    props = _props(graph)
    written = {k for k in props if k.startswith("subtune.")}
    assert written <= set(graph_metadata.keys()), written - set(graph_metadata.keys())
    assert set(graph_metadata.required_keys()) <= written
    meta = graph_metadata.decode(props, str(graph))
    assert meta["subtune.schema"] == 1  # it uses nothing newer: readers of schema 1 read it
    assert meta["subtune.outputs"] == ["base", "t1", "t2"] and meta["subtune.input_size"] == [32, 32]
    assert [t["name"] for t in meta["subtune.tasks"]] == ["t1", "t2"] and meta["subtune.verified"] is False


def test_the_definition_is_json_schema_and_the_check_agrees_with_jsonschema():
    """Each key's schema is valid JSON Schema, and subtune's small checker (which the Triton model
    shares) accepts and refuses the same values as the jsonschema library."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (installed with the ray extra) is absent")
    samples = {
        "subtune.input_size": ([224, 224], [224], [0, 5], ["a", 1], None, [1, 2, 3]),
        "subtune.tasks": ([{"name": "a", "blocks": [1, 2], "siamese": False, "num_classes": 3, "kind": "delta"}],
                          [{"name": "a", "blocks": [], "siamese": False, "num_classes": 3, "kind": "tap",
                            "tap_points": [1, 5], "classes": None}],
                          [{"name": "a", "blocks": [1], "siamese": "no", "num_classes": 3, "kind": "delta"}],
                          [{"name": "a", "blocks": [1], "siamese": True, "num_classes": 3, "kind": "lora"}],
                          [{"name": "a"}], {"name": "a"}),
        "subtune.verified": (True, "true", 1),
        "subtune.preprocess": ({"t": {"image_size": [8, 8], "mean": [0.1], "std": [0.2]}},
                               {"t": {"image_size": [8, 8], "mean": [0.1]}}, {"t": []}),
        "subtune.schema": (1, 0, 1.5, True),
    }
    checked = 0
    for key, values in samples.items():
        schema = graph_metadata.keys()[key]["schema"]
        validator = jsonschema.Draft202012Validator(schema)
        validator.check_schema(schema)
        for value in values:
            assert (graph_metadata.check(value, schema, key) is None) == validator.is_valid(value), (key, value)
            checked += 1
    for spec in graph_metadata.keys().values():
        jsonschema.Draft202012Validator.check_schema(spec["schema"])
    assert checked == sum(map(len, samples.values()))


def test_encode_refuses_what_the_definition_does_not_say():
    with pytest.raises(graph_metadata.GraphMetadataError, match="'subtune.colour' is not in graph_metadata.schema"):
        graph_metadata.encode({"subtune.colour": "red"})
    with pytest.raises(graph_metadata.GraphMetadataError, match=r"subtune.input_size\[1\] is string"):
        graph_metadata.encode({"subtune.input_size": [224, "224"]})
    with pytest.raises(graph_metadata.GraphMetadataError, match="lacks required key"):
        graph_metadata.encode({"subtune.arch": "x"}, complete=True)
    assert graph_metadata.encode({"subtune.arch": "a:b", "subtune.verified": True, "other": "kept"}) == \
        {"subtune.arch": "a:b", "subtune.verified": "true", "other": "kept"}


def _readers():
    from subtune.inspection import describe
    from subtune.serving.graph import read_graph

    return {"serving.read_graph": read_graph, "inspection.describe": describe}


@pytest.mark.parametrize("reader", ["serving.read_graph", "inspection.describe"])
def test_every_python_reader_refuses_a_newer_schema_and_a_missing_key(graph, tmp_path, reader):
    read = _readers()[reader]
    read(graph)  # the graph as compiled reads
    cases = [
        (newer_schema(graph, tmp_path / "newer.onnx"),
         f"follows schema {graph_metadata.schema_version() + 1}, this reader knows schema "
         f"{graph_metadata.schema_version()} at most; upgrade subtune"),
        (missing_key(graph, tmp_path / "missing.onnx", "subtune.tasks"), "lacks subtune.tasks"),
        (rewrite_metadata(graph, tmp_path / "typed.onnx", set={"subtune.input_size": [32]}),
         "metadata subtune.input_size has 1 items, expected 2"),
        (rewrite_metadata(graph, tmp_path / "json.onnx", set={"subtune.outputs": "[base"}), "is not valid JSON"),
        # a task-select key in a graph stamped schema 1: a schema-1 reader would run it without its `tasks` input
        (rewrite_metadata(graph, tmp_path / "stamp.onnx", set={"subtune.task_select": {"input": "tasks"}}),
         "metadata subtune.task_select came with schema 2, but the graph's metadata says schema 1"),
    ]
    for path, message in cases:
        with pytest.raises(SubtuneError) as e:
            read(path)
        assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_graph_from_before_the_schema_key_reads_as_version_1(graph, tmp_path):
    old = missing_key(graph, tmp_path / "old.onnx", "subtune.schema")
    assert graph_metadata.decode(_props(old))["subtune.schema"] == 1


def test_inspect_describes_any_onnx_file(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from subtune.inspection import describe

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), str(tmp_path / "plain.onnx"))
    info = describe(str(tmp_path / "plain.onnx"))
    assert info["subtune_graph"] is False and info["outputs"] == ["y"]
    assert json.dumps(info)


def test_a_graph_is_stamped_with_the_lowest_schema_that_describes_it(graph, tmp_path, monkeypatch):
    """A task-select graph needs schema 2 (a reader that knows only 1 would run it without its
    second input); a plain graph stays at 1. A reader of schema 1 refuses the first in one line."""
    from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
    from subtune.compiler.plan import Plan
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", seed=0)
    plan = compile_plan(Plan(base, [synthetic_task(base, "t1", [3], seed=1)]),
                        CompileOptions(verify=False, check_tensorrt=False, task_select=True))
    path = tmp_path / "select.onnx"
    path.write_bytes(serialize(plan))
    assert graph_metadata.keys()["subtune.task_select"]["since"] == 2 <= graph_metadata.schema_version()
    assert graph_metadata.decode(_props(path))["subtune.schema"] == 2
    assert graph_metadata.decode(_props(graph))["subtune.schema"] == 1
    monkeypatch.setattr(graph_metadata, "schema_version", lambda: 1)  # an older reader
    graph_metadata.decode(_props(graph))
    with pytest.raises(graph_metadata.GraphMetadataError, match="follows schema 2, this reader knows schema 1 at most"):
        graph_metadata.decode(_props(path), str(path))
