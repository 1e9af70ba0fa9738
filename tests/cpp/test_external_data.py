"""The C++ library (subtune::Model) and subtune-infer on a graph with external data (model.onnx +
model.onnx.data, as a compile over 2 GiB writes it): loaded from the .onnx path, the weights found
beside it, the answers equal Python's ONNX Runtime on the same pair (batch 1 and 4, 1e-5 relative).
A small graph forced to external data takes the same path as a 3 GB one."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tests.cpp.conftest import COARSE, FASHION, MEAN, SIZE, STD
from tests.cpp.test_cpp import TOL, _python_images, _write_images, rel_error, run


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    import subtune
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", seed=0)
    _, bb = base.build()
    pre = {"image_size": list(SIZE), "mean": MEAN, "std": STD, "channels": 3}
    tasks = []
    for seed, (name, blocks, classes) in enumerate([("fashion10", [5, 6], FASHION), ("coarse4", [6, 7], COARSE)], 1):
        t = synthetic_task(base, name, blocks, num_classes=len(classes), seed=seed, backbone=bb)
        tasks.append(dataclasses.replace(t, classes=list(classes), meta={**t.meta, "preprocess": pre}))
    out = tmp_path_factory.mktemp("cpp_pair") / "pair.onnx"
    result = subtune.compile(base, tasks, out, external_data=True, report=False, check_tensorrt=False)
    assert result.files == [out, out.with_name("pair.onnx.data")]
    return out


@pytest.fixture(scope="module")
def pair_session(pair):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(pair), sess_options=opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 4])
def test_library_runs_a_graph_with_external_data(cpp_build, pair, pair_session, tmp_path, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 3, *SIZE)).astype(np.float32)
    (tmp_path / "in.f32").write_bytes(x.tobytes())
    r = run([cpp_build.model_test, "run", pair, tmp_path / "in.f32", batch, tmp_path, 1, "onnxruntime"])
    assert r.returncode == 0, r.stderr
    for output, ref in zip(pair_session.get_outputs(), pair_session.run(None, {"images": x})):
        got = np.fromfile(tmp_path / f"{output.name}.f32", dtype=np.float32)
        assert got.size == ref.size
        assert rel_error(got.reshape(ref.shape), ref) <= TOL, f"{output.name} at batch {batch}"


def test_subtune_infer_on_images_with_external_data(cpp_build, pair, pair_session, tmp_path):
    images = _write_images(tmp_path / "imgs")
    out = tmp_path / "out.json"
    r = run([cpp_build.infer, pair, "--image", *images, "--threads", 1, "--json", out])
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    x = _python_images(images[0].parent)
    for output, ref in zip(pair_session.get_outputs(), pair_session.run(None, {"images": x})):
        got = np.array([img["outputs"][output.name]["logits"] for img in result["images"]], dtype=np.float32)
        assert rel_error(got, ref) <= TOL, output.name
    (pair.parent / "pair.onnx.data").rename(tmp_path / "elsewhere.data")  # the pair moved apart: one line
    try:
        r = run([cpp_build.infer, pair, "--threads", 1])
        assert r.returncode != 0 and "Traceback" not in r.stderr and r.stderr.strip(), r.stdout
    finally:
        (tmp_path / "elsewhere.data").rename(pair.parent / "pair.onnx.data")
