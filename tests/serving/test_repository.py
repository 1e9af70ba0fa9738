"""`subtune triton-repo`: every generated config parses into Triton's own ModelConfig protobuf (all
three backends, the preprocessing model and the ensemble) and says what the graph says."""

from __future__ import annotations

import json

import pytest

from subtune.errors import SubtuneError
from subtune.serving.repository import RepoOptions, write_repository
from tests.serving.conftest import PREPROCESS, T1_CLASSES
from tests.metadata_fixtures import with_subtune_metadata


@pytest.fixture(scope="module")
def model_config():
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[all] is not installed (pip install 'tritonclient[all]')")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def parse(path):
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())

    return parse


def _fake_engine(graph, folder, monkeypatch):
    """An 'engine' file beside the ONNX it came from, each recording the other's hash as
    subtune-compile -o engine.plan leaves them: the repository copies the engine's bytes and reads
    shapes and metadata from the ONNX. The pair is checked by its hashes only (TensorRT, where
    present, would refuse to deserialize these bytes)."""
    from subtune.runtimes import tensorrt

    onnx_path = folder / "engine.onnx"
    onnx_path.write_bytes(graph.read_bytes())
    plan = folder / "engine.plan"
    plan.write_bytes(b"serialized engine bytes")
    tensorrt.record_engine(onnx_path, plan, batch_range=(1, 8, 32), graph_sha256=tensorrt.onnx_graph_sha256(onnx_path))
    monkeypatch.setattr(tensorrt, "tensorrt_unavailable_reason", lambda: "a fake engine: its hashes are checked")
    return plan


@pytest.mark.parametrize("backend", ["python", "onnxruntime", "tensorrt"])
def test_configs_parse_as_triton_model_config(backend, tiny_graph, tmp_path, model_config, monkeypatch):
    src = _fake_engine(tiny_graph, tmp_path, monkeypatch) if backend == "tensorrt" else tiny_graph
    repo = write_repository(src, tmp_path / "repo", RepoOptions(name="m", backend=backend, max_batch_size=16,
                                                               instances=2, preprocess=True))
    assert repo.models == ["m", "m_preprocess", "m_ensemble"]
    cfg = model_config(repo.path / "m" / "config.pbtxt")
    assert cfg.name == "m" and cfg.max_batch_size == 16
    if backend == "python":
        assert cfg.backend == "python"
        assert (repo.path / "m" / "1" / "model.py").is_file() and (repo.path / "m" / "1" / "model.onnx").is_file()
    else:
        assert cfg.platform == {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[backend]
        model_file = repo.path / "m" / "1" / ("model.plan" if backend == "tensorrt" else "model.onnx")
        assert model_file.read_bytes() == src.read_bytes()
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("images", [3, 32, 32])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("base", [10]), ("t1", [4]), ("t2", [10])]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4, 8, 16]
    kind = "KIND_GPU" if backend == "tensorrt" else "KIND_CPU"
    assert [(g.count, g.Kind.Name(g.kind)) for g in cfg.instance_group] == [(2, kind)]
    # the subtune metadata travels in parameters, as JSON
    assert json.loads(cfg.parameters["subtune.outputs"].string_value) == ["base", "t1", "t2"]
    assert json.loads(cfg.parameters["subtune.preprocess"].string_value)["t1"] == PREPROCESS
    # label file for the task with class names only, in the version folder (each version has its own)
    labels = {o.name: o.label_filename for o in cfg.output}
    assert labels == {"base": "", "t1": "1/labels_t1.txt", "t2": ""}
    assert (repo.path / "m" / "1" / "labels_t1.txt").read_text().splitlines() == T1_CLASSES
    # version 1, served by name (so versions 2, 3, ... can be written beside it while it serves)
    assert repo.version == 1 and list(cfg.version_policy.specific.versions) == [1]
    assert json.loads(cfg.parameters["served_versions"].string_value) == [1]

    pre = model_config(repo.path / "m_preprocess" / "config.pbtxt")
    assert pre.backend == "python" and [list(o.dims) for o in pre.output] == [[3, 32, 32]]
    assert json.loads(pre.parameters["preprocess"].string_value)["image_size"] == [32, 32]
    ens = model_config(repo.path / "m_ensemble" / "config.pbtxt")
    assert ens.platform == "ensemble" and [s.model_name for s in ens.ensemble_scheduling.step] == ["m_preprocess", "m"]
    assert [o.name for o in ens.output] == ["base", "t1", "t2"]
    assert {o.name: o.label_filename for o in ens.output}["t1"] == "../m/1/labels_t1.txt"  # the served version's
    assert (repo.path / "m_ensemble" / "1").is_dir()


def test_no_dynamic_batching_and_defaults(tiny_graph, tmp_path, model_config):
    repo = write_repository(tiny_graph, tmp_path / "r", RepoOptions(dynamic_batching=False, max_batch_size=4))
    cfg = model_config(repo.path / "tiny" / "config.pbtxt")
    assert repo.models == ["tiny"] and cfg.backend == "python" and not cfg.HasField("dynamic_batching")


def test_bad_input_leaves_nothing(tiny_graph, tmp_path):
    cases = [
        (dict(backend="tensorrt"), "TensorRT engine"),
        (dict(max_batch_size=0), "max-batch-size"),
        (dict(name="bad name"), "model name"),
        (dict(device="gpu"), "runs ONNX Runtime on CPU"),
    ]
    for opts, message in cases:
        with pytest.raises(SubtuneError, match=message):
            write_repository(tiny_graph, tmp_path / "r", RepoOptions(**opts))
        assert not (tmp_path / "r").exists()
    import onnx

    g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["images"], ["base"])], "g",
                               [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["b", 3, 8, 8])],
                               [onnx.helper.make_tensor_value_info("base", onnx.TensorProto.FLOAT, ["b", 3, 8, 8])])
    onnx.save(onnx.helper.make_model(g), str(tmp_path / "foreign.onnx"))  # no subtune metadata
    with pytest.raises(SubtuneError, match="not a subtune graph"):
        write_repository(tmp_path / "foreign.onnx", tmp_path / "r", RepoOptions())
    (tmp_path / "exists").mkdir()
    with pytest.raises(SubtuneError, match="exists"):
        write_repository(tiny_graph, tmp_path / "exists", RepoOptions())
    (tmp_path / "lonely.plan").write_bytes(b"x")
    with pytest.raises(SubtuneError, match="lonely.onnx"):
        write_repository(tmp_path / "lonely.plan", tmp_path / "r", RepoOptions())
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a graph")
    with pytest.raises(SubtuneError, match="not a readable ONNX"):
        write_repository(garbage, tmp_path / "r", RepoOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "foreign.onnx", "garbage.onnx", "lonely.plan"]


def test_preprocess_needs_recorded_preprocessing(tmp_path):
    """A graph whose tasks record no preprocessing cannot get the image ensemble; an ONNX file that
    is not a compiled graph is refused in one line."""
    import onnx

    from subtune.serving.graph import read_graph

    g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["images"], ["base"])], "g",
                               [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["b", 3, 8, 8])],
                               [onnx.helper.make_tensor_value_info("base", onnx.TensorProto.FLOAT, ["b", 3, 8, 8])])
    path = tmp_path / "plain.onnx"
    onnx.save(with_subtune_metadata(onnx.helper.make_model(g), ["base"]), str(path))
    assert read_graph(path).outputs[0].dims == [3, 8, 8]
    with pytest.raises(SubtuneError, match="records no preprocessing"):
        write_repository(path, tmp_path / "r", RepoOptions(preprocess=True))
    assert not (tmp_path / "r").exists()


def test_cli_one_line_error(tiny_graph, tmp_path, capsys):
    from subtune.cli import main

    assert main(["triton-repo", str(tiny_graph), "-o", str(tmp_path / "r"), "--backend", "tensorrt"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "TensorRT engine" in err and "Traceback" not in err
    assert main(["triton-repo", str(tiny_graph), "-o", str(tmp_path / "r"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"] == ["tiny"]


def test_external_weights_travel_with_the_graph(tmp_path):
    """A graph saved with ONNX external data (compiles over 2 GiB are): the weights file is copied
    under the name the graph records, and the copied model loads and computes."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(9, dtype=np.float32).reshape(3, 3)
    g = helper.make_graph([helper.make_node("MatMul", ["images", "w"], ["base"])], "g",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3])],
                          [helper.make_tensor_value_info("base", TensorProto.FLOAT, ["b", 3])],
                          [numpy_helper.from_array(w, "w")])
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(with_subtune_metadata(helper.make_model(g), ["base"]), str(src / "big.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="big.onnx.data", size_threshold=0)
    repo = write_repository(src / "big.onnx", tmp_path / "r", RepoOptions(backend="onnxruntime"))
    version = repo.path / "big" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["big.onnx.data", "model.onnx"]
    x = np.ones((2, 3), dtype=np.float32)
    out = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    assert np.array_equal(out[0], x @ w)
    (src / "big.onnx.data").unlink()
    with pytest.raises(SubtuneError, match="not beside it"):
        write_repository(src / "big.onnx", tmp_path / "r2", RepoOptions())


@pytest.mark.parametrize("backend", ["python", "onnxruntime"])
def test_task_select_graph_configs(backend, tiny_select_graph, tmp_path, model_config):
    """A --task-select graph: the configuration declares its mask `tasks` (BOOL [2]); optional with the
    python backend, whose model builds it from the outputs a request names, required with Triton's
    onnxruntime backend, which feeds the graph what clients send. With --preprocess the image
    ensemble is a python model chaining the same two models (Triton's ensemble platform would ask
    the graph for every output)."""
    from subtune.serving.models import TASK_SELECT_ENSEMBLE

    repo = write_repository(tiny_select_graph, tmp_path / "repo", RepoOptions(name="m", backend=backend,
                                                                            preprocess=True))
    from tritonclient.grpc import model_config_pb2

    cfg = model_config(repo.path / "m" / "config.pbtxt")
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims), i.optional) for i in cfg.input] == \
        [("images", "TYPE_FP32", [3, 32, 32], False), ("tasks", "TYPE_BOOL", [2], backend == "python")]
    assert json.loads(cfg.parameters["subtune.task_select"].string_value)["columns"] == ["t1", "t2"]
    ens = model_config(repo.path / "m_ensemble" / "config.pbtxt")
    assert ens.backend == "python" and not ens.platform and not ens.ensemble_scheduling.step
    assert [o.name for o in ens.output] == ["base", "t1", "t2"]
    assert {o.name: o.label_filename for o in ens.output}["t1"] == "../m/1/labels_t1.txt"
    assert {k: v.string_value for k, v in ens.parameters.items()} == \
        {"graph_model": "m", "preprocess_model": "m_preprocess", "images_input": "images"}
    assert (repo.path / "m_ensemble" / "1" / "model.py").read_bytes() == TASK_SELECT_ENSEMBLE.read_bytes()


def test_task_select_metadata_must_match_the_graph(tiny_select_graph, tmp_path):
    """A graph whose subtune.task_select names columns other than its task outputs is refused in one line."""
    import onnx

    model = onnx.load(str(tiny_select_graph))
    for prop in model.metadata_props:
        if prop.key == "subtune.task_select":
            prop.value = prop.value.replace('["t1", "t2"]', '["t2", "t1"]')
    onnx.save(model, str(tmp_path / "lying.onnx"))
    with pytest.raises(SubtuneError, match=r"columns?.*t2, t1.*found input tasks BOOL \[2\] and task outputs t1, t2"):
        write_repository(tmp_path / "lying.onnx", tmp_path / "r", RepoOptions())
    assert not (tmp_path / "r").exists()
