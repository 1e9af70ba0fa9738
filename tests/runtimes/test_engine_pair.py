"""#22 item 4: an engine and the engine.onnx beside it carry each other's hash, and whatever reads
the pair (`subtune triton-repo`, `subtune serve`) refuses one that does not belong together.

TensorRT cannot run here, so the engine is a file of bytes: what is under test is the pairing
check, which reads the engine as bytes everywhere (its sha256 against the ONNX's record, the ONNX
graph against the recorded graph hash). Where TensorRT is usable the check also deserializes the
engine (its name is the graph hash); tests/runtimes/test_tensorrt.py builds a real engine for that.
"""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

import subtune
from subtune.cli import main
from subtune.errors import SubtuneError
from subtune.runtimes.tensorrt import ENGINE_KEY, check_engine_pair, onnx_graph_sha256, record_engine


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)
    task = synthetic_task(base, "t", [7, 8], seed=1)
    out = tmp_path_factory.mktemp("compiled") / "m.onnx"
    subtune.compile(base, [task], out, image_size=16, verify=False, report=False)
    return out


def make_pair(folder, compiled, engine_bytes: bytes, batch_range=(1, 8, 32)):
    """engine.plan (these bytes) and engine.onnx (the compiled graph) with the record compile writes."""
    folder.mkdir(exist_ok=True)
    engine, onnx_path = folder / "engine.plan", folder / "engine.onnx"
    shutil.copyfile(compiled, onnx_path)
    engine.write_bytes(engine_bytes)
    record_engine(onnx_path, engine, batch_range=batch_range, graph_sha256=onnx_graph_sha256(onnx_path))
    return engine


def _one_line(capsys, argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_the_onnx_records_the_engine_and_its_own_graph(tmp_path, compiled):
    engine = make_pair(tmp_path / "pair", compiled, b"engine bytes")
    model = onnx.load(str(engine.with_suffix(".onnx")))
    record = json.loads({p.key: p.value for p in model.metadata_props}[ENGINE_KEY])
    assert record["batch_range"] == [1, 8, 32] and len(record["sha256"]) == 64
    assert record["graph_sha256"] == onnx_graph_sha256(compiled)  # the record lies outside the graph it hashes


def test_a_mismatched_engine_and_onnx_are_refused(tmp_path, compiled, capsys):
    engine = make_pair(tmp_path / "pair", compiled, b"the engine of one compile")
    onnx_path = engine.with_suffix(".onnx")

    engine.write_bytes(b"the engine of another compile")
    with pytest.raises(SubtuneError, match="is not the engine engine.onnx was built into .*different compiles"):
        subtune.triton_repo(engine, tmp_path / "repo")
    err = _one_line(capsys, ["triton-repo", engine, "-o", tmp_path / "repo"])
    assert "different compiles" in err
    err = _one_line(capsys, ["serve", engine, "--ready-timeout", "5"])  # refused before any server starts
    assert "different compiles" in err

    shutil.copyfile(compiled, onnx_path)  # an ONNX with no record: not the one the engine was built from
    with pytest.raises(SubtuneError, match="records no engine"):
        subtune.triton_repo(engine, tmp_path / "repo")

    engine = make_pair(tmp_path / "edited", compiled, b"an engine")
    model = onnx.load(str(engine.with_suffix(".onnx")))
    model.graph.node[0].name = "edited"  # the graph changes, the record (metadata) stays
    onnx.save(model, str(engine.with_suffix(".onnx")))
    with pytest.raises(SubtuneError, match="its graph is not the one engine.plan was built from"):
        check_engine_pair(engine, model, engine.with_suffix(".onnx"))
    _one_line(capsys, ["triton-repo", engine, "-o", tmp_path / "repo"])
    assert not (tmp_path / "repo").exists()


def test_a_matching_pair_is_served_and_max_batch_size_must_fit_its_profile(tmp_path, compiled, capsys, monkeypatch):
    """The recorded profile bounds --max-batch-size (a real engine's own profile is compared with
    the record where TensorRT is usable: tests/runtimes/test_tensorrt.py)."""
    from subtune.runtimes import tensorrt

    # bytes, not an engine: checked by their hashes (TensorRT, where present, would not deserialize them)
    monkeypatch.setattr(tensorrt, "tensorrt_unavailable_reason", lambda: "a fake engine: its hashes are checked")
    engine = make_pair(tmp_path / "pair", compiled, b"an engine", batch_range=(1, 8, 32))
    pair = check_engine_pair(engine, onnx.load(str(engine.with_suffix(".onnx"))), engine.with_suffix(".onnx"))
    assert pair.batch_range == (1, 8, 32) and not pair.checked_by_tensorrt
    repo = subtune.triton_repo(engine, tmp_path / "repo", max_batch_size=32)
    assert repo.backend == "tensorrt" and (tmp_path / "repo" / "engine" / "1" / "model.plan").read_bytes() == b"an engine"
    assert "max_batch_size: 32" in (tmp_path / "repo" / "engine" / "config.pbtxt").read_text()

    with pytest.raises(SubtuneError, match="`max_batch_size` 64 exceeds the largest batch engine.plan takes") as e:
        subtune.triton_repo(engine, tmp_path / "big", max_batch_size=64)
    assert "--" not in str(e.value)
    err = _one_line(capsys, ["triton-repo", engine, "-o", tmp_path / "big", "--max-batch-size", "64"])
    assert "--max-batch-size 64 exceeds" in err and "--batch-range MAX" in err
    engine = make_pair(tmp_path / "from4", compiled, b"an engine", batch_range=(4, 8, 32))
    with pytest.raises(SubtuneError, match="takes batches 4..32"):
        subtune.triton_repo(engine, tmp_path / "from4repo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["from4", "pair", "repo"]
    subtune.triton_repo(engine, tmp_path / "python", backend="python", max_batch_size=64)  # the ONNX, in ONNX Runtime
