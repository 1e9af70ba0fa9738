"""The C++ library and CLI on a compiled graph, against Python's ONNX Runtime and subtune's own
metadata and image loading (batch 1 and 4, every output within 1e-5 relative)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.cpp.conftest import COARSE, FASHION, SIZE, graph_metadata, python_images, rel_error, run

TOL = 1e-5
RUNTIMES = ["onnxruntime", "openvino"]  # openvino skips where the build has none (see conftest)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("batch", [1, 4])
def test_library_outputs_match_python_onnxruntime(cpp_build, cpp_graph, python_session, tmp_path, batch, runtime):
    cpp_build.require(runtime)
    x = np.random.default_rng(batch).standard_normal((batch, 3, *SIZE)).astype(np.float32)
    (tmp_path / "in.f32").write_bytes(x.tobytes())
    r = run([cpp_build.model_test, "run", cpp_graph, tmp_path / "in.f32", batch, tmp_path, 1, runtime])
    assert r.returncode == 0, r.stderr
    names = [o.name for o in python_session.get_outputs()]
    assert names == ["base", "fashion10", "coarse4"]
    reference = python_session.run(None, {"images": x})
    for name, ref in zip(names, reference):
        got = np.fromfile(tmp_path / f"{name}.f32", dtype=np.float32)
        assert got.size == ref.size, f"{name}: {got.size} values from C++, {ref.size} from Python"
        err = rel_error(got.reshape(ref.shape), ref)
        assert err <= TOL, f"{name} at batch {batch}: relative error {err:.2e} > {TOL}"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_external_data_graph_matches_python_onnxruntime(cpp_build, external_data_graph, tmp_path, runtime):
    """A graph whose weights are in model.onnx.data beside it (ONNX external data) runs in the
    library with Python's outputs at batch 1 and 4, and in the CLI from another folder by a
    relative path."""
    import onnx
    import onnxruntime as ort

    cpp_build.require(runtime)
    model = onnx.load(str(external_data_graph), load_external_data=False)
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) > 10, "the weights are not external"
    session = ort.InferenceSession(str(external_data_graph), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        x = np.random.default_rng(batch).standard_normal((batch, 3, *SIZE)).astype(np.float32)
        (tmp_path / "in.f32").write_bytes(x.tobytes())
        r = run([cpp_build.model_test, "run", external_data_graph, tmp_path / "in.f32", batch, tmp_path, 1, runtime])
        assert r.returncode == 0, r.stderr
        for name, ref in zip([o.name for o in session.get_outputs()], session.run(None, {"images": x})):
            got = np.fromfile(tmp_path / f"{name}.f32", dtype=np.float32).reshape(ref.shape)
            assert rel_error(got, ref) <= TOL, f"{name} at batch {batch}"
    folder = external_data_graph.parent
    r = run([cpp_build.infer, f"{folder.name}/model.onnx", "--runtime", runtime, "--json", tmp_path / "out.json"],
            cwd=folder.parent)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out.json").read_text())["images"][0]["outputs"].keys() == {"base", "fashion10",
                                                                                              "coarse4"}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_external_data_missing_or_truncated_is_one_line(cpp_build, external_data_graph, tmp_path, runtime, damage):
    cpp_build.require(runtime)
    graph = tmp_path / "model.onnx"
    shutil.copy(external_data_graph, graph)
    data = external_data_graph.with_name("model.onnx.data").read_bytes()
    if damage == "truncated":
        (tmp_path / "model.onnx.data").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.json"
    r = run([cpp_build.infer, graph, "--runtime", runtime, "--json", out])
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    expected = "which does not exist; keep model.onnx and model.onnx.data together" if damage == "missing" else \
        f"holds {len(data) // 2} bytes but the graph reads"
    assert len(lines) == 1 and expected in lines[0] and "model.onnx.data" in lines[0], r.stderr
    assert r.stdout == "" and not out.exists()


def test_library_reads_the_graphs_metadata(cpp_build, cpp_graph, tmp_path):
    x = np.zeros((1, 3, *SIZE), np.float32)
    (tmp_path / "in.f32").write_bytes(x.tobytes())
    r = run([cpp_build.model_test, "run", cpp_graph, tmp_path / "in.f32", 1, tmp_path])
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "meta.json").read_text())
    meta = graph_metadata(cpp_graph)
    assert got["outputs"] == meta["subtune.outputs"] == ["base", "fashion10", "coarse4"]
    assert got["arch"] == meta["subtune.arch"] == "subtune:tiny_resnet"
    assert got["version"] == meta["subtune.version"]
    assert got["input_size"] == meta["subtune.input_size"] == list(SIZE)
    assert got["verified"] == (meta.get("subtune.verified") is True)
    for mine, theirs in zip(got["tasks"], meta["subtune.tasks"], strict=True):
        for key in ("name", "blocks", "siamese", "num_classes", "classes", "kind"):
            if key in theirs:  # "kind" only from compilers that record it
                assert mine[key] == theirs[key], key
        pre = meta["subtune.preprocess"][theirs["name"]]
        assert mine["preprocess"]["image_size"] == pre["image_size"]
        np.testing.assert_allclose(mine["preprocess"]["mean"], pre["mean"], rtol=1e-7)
        np.testing.assert_allclose(mine["preprocess"]["std"], pre["std"], rtol=1e-7)
    assert [t["classes"] for t in got["tasks"]] == [FASHION, COARSE]


def test_library_api_checks(cpp_build, cpp_graph):
    """Batch-4 rows equal each image alone, bad shapes/batch 0/unknown outputs throw one-line errors,
    and Model::run checks the buffer's size against the batch (one value short, one image too many)."""
    r = run([cpp_build.model_test, "checks", cpp_graph])
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout


def test_models_share_one_environment_and_thread_pool(cpp_build, cpp_graph):
    """Four models in one process (3 intra-op threads asked for) add no thread after the first: one
    Ort::Env with global thread pools, not a pool per session. They run at once from four threads
    with the first model's outputs, and a model asking for another thread count is refused."""
    r = run([cpp_build.model_test, "shared", cpp_graph, 4, 3])
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["models"] == 4 and got["failed"] == 0, r.stdout
    assert got["threads_after_all"] == got["threads_after_first"], got


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_graph_with_a_non_float_output_is_refused_in_one_line(cpp_build, int64_output_graph, runtime, tmp_path):
    import onnxruntime as ort

    cpp_build.require(runtime)
    # A valid graph: Python's ONNX Runtime runs it and gives int64 for coarse4, which read as float
    # would be garbage.
    session = ort.InferenceSession(str(int64_output_graph), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"images": np.zeros((1, 3, *SIZE), np.float32)})
    assert [o.dtype for o in outputs] == [np.float32, np.float32, np.int64]
    out = tmp_path / "out.json"
    r = run([cpp_build.infer, int64_output_graph, "--runtime", runtime, "--json", out])
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "output coarse4 is int64, expected float32" in lines[0], r.stderr
    assert r.stdout == "" and not out.exists()


# --- images: the C++ preprocessing against subtune's Python image loader ----------------------------

@pytest.fixture(scope="module")
def images(cpp_images):
    return cpp_images


def test_preprocessing_matches_subtunes_image_loader(cpp_build, cpp_graph, images, tmp_path):
    reference = python_images(images[0].parent)
    for i, path in enumerate(images):
        out = tmp_path / f"{i}.f32"
        r = run([cpp_build.model_test, "preprocess", cpp_graph, path, out])
        assert r.returncode == 0, r.stderr
        got = np.fromfile(out, dtype=np.float32).reshape(3, *SIZE)
        # Same uint8 pixels after PIL's fixed-point resize, then the same float32 arithmetic.
        np.testing.assert_array_equal(got, reference[i], err_msg=f"{path.name}")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("batch", [1, 4])
def test_cli_on_images_matches_python(cpp_build, cpp_graph, python_session, images, tmp_path, batch, runtime):
    cpp_build.require(runtime)
    chosen = images[:batch]
    out = tmp_path / "out.json"
    r = run([cpp_build.infer, cpp_graph, "--image", *chosen, "--threads", 1, "--top", 2, "--json", out,
             "--runtime", runtime])
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    x = python_images(images[0].parent)[:batch]
    reference = dict(zip([o.name for o in python_session.get_outputs()], python_session.run(None, {"images": x})))
    assert [img["source"] for img in result["images"]] == [str(p) for p in chosen]
    for name, ref in reference.items():
        got = np.array([img["outputs"][name]["logits"] for img in result["images"]], dtype=np.float32)
        err = rel_error(got, ref)
        assert err <= TOL, f"{name} at batch {batch}: relative error {err:.2e} > {TOL}"
    # The printed top class of each task is Python's argmax, by name.
    for i, img in enumerate(result["images"]):
        for name, classes in (("fashion10", FASHION), ("coarse4", COARSE)):
            best = classes[int(np.argmax(reference[name][i]))]
            assert img["outputs"][name]["top"][0]["class"] == best
            assert f"{name}:" in r.stdout and best in r.stdout


def test_docs_example_names_pythons_best_classes(cpp_build, cpp_graph, python_session, images):
    r = run([cpp_build.example, cpp_graph, *images])
    assert r.returncode == 0, r.stderr
    x = python_images(images[0].parent)
    reference = dict(zip([o.name for o in python_session.get_outputs()], python_session.run(None, {"images": x})))
    expected = [f"{path} {name}: {classes[int(np.argmax(reference[name][i]))]}"
                for i, path in enumerate(images) for name, classes in (("fashion10", FASHION), ("coarse4", COARSE))]
    assert r.stdout.splitlines() == expected


def test_docs_example_is_the_built_example():
    """docs/cpp.md's example is cpp/examples/classify.cpp (which the tests build and run), line for
    line, less its usage check."""
    from tests.cpp.conftest import ROOT

    doc = (ROOT / "docs" / "cpp.md").read_text()
    example = doc.split("```cpp\n", 1)[1].split("```", 1)[0].splitlines()
    source = iter((ROOT / "cpp" / "examples" / "classify.cpp").read_text().splitlines())
    missing = [line for line in example if not any(line == s for s in source)]
    assert not missing and len(example) > 20, f"docs/cpp.md's example has lines not in classify.cpp: {missing}"


def test_cli_bench_reports_the_protocol(cpp_build, cpp_graph, tmp_path):
    out = tmp_path / "bench.json"
    r = run([cpp_build.infer, cpp_graph, "--bench", "--batch", 2, "--threads", 1, "--warmup", 1, "--iters", 3,
             "--repeats", 2, "--json", out])
    assert r.returncode == 0, r.stderr
    b = json.loads(out.read_text())
    assert b["batch"] == 2 and b["protocol"] == {"warmup": 1, "iters": 3, "repeats": 2}
    assert len(b["repeat_medians_ms"]) == 2 and b["min_ms"] <= b["median_ms"] <= b["p99_ms"]
    assert "batch 2: median" in r.stdout


def test_cli_without_openvino_says_how_to_add_it(cpp_build, cpp_graph):
    if "openvino" in cpp_build.runtimes:
        pytest.skip("this build has OpenVINO: the message for builds without it cannot show here")
    r = run([cpp_build.infer, cpp_graph, "--runtime", "openvino"])
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "pip install openvino" in r.stderr, r.stderr


# --- bad input: one line on stderr, exit 1, no output file, no crash ---------------------------------

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper
    from PIL import Image

    d = tmp_path_factory.mktemp("cpp_bad")
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["y"])], "plain",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 32, 32])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), d / "plain.onnx")
    (d / "garbage.onnx").write_bytes(b"this is not a protobuf \x00\xff" * 10)
    ppm = b"P6\n32 32\n255\n" + bytes(range(256)) * 4  # 1024 bytes where 3072 are needed
    (d / "truncated.ppm").write_bytes(ppm)
    Image.fromarray(np.zeros((32, 32, 4), np.uint8), mode="RGBA").save(d / "rgba.png")
    (d / "notes.txt").write_text("not an image\n")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / "ok.ppm")
    # libpng's errors (its longjmp) at the header and in the pixel data.
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(d / "good.png")
    png = (d / "good.png").read_bytes()
    (d / "broken_header.png").write_bytes(png[:16] + b"\xff\xff" + png[18:])       # IHDR width, CRC now wrong
    (d / "cut_pixels.png").write_bytes(png[:len(png) // 2])                          # IDAT cut in the middle
    return d


BAD = {
    "missing model": (lambda d, g: [d / "nope.onnx"], "no such file"),
    "not a subtune graph": (lambda d, g: [d / "plain.onnx"], "not a subtune graph"),
    "not ONNX at all": (lambda d, g: [d / "garbage.onnx"], "could not load it as an ONNX model"),
    "missing image": (lambda d, g: [g, "--image", d / "nope.ppm"], "no such file"),
    "image of the wrong size (truncated)": (lambda d, g: [g, "--image", d / "truncated.ppm"], "truncated"),
    "image with 4 channels": (lambda d, g: [g, "--image", d / "rgba.png"], "expected grey or RGB"),
    "not an image": (lambda d, g: [g, "--image", d / "notes.txt"], "not a PPM/PGM or PNG image"),
    "PNG with a broken header": (lambda d, g: [g, "--image", d / "broken_header.png"], "not a readable PNG"),
    "PNG cut short in its pixels": (lambda d, g: [g, "--image", d / "cut_pixels.png"], "not a readable PNG"),
    "a folder as image": (lambda d, g: [g, "--image", d], "is a folder"),
    "batch 0": (lambda d, g: [g, "--batch", 0], "expected a positive number of images"),
    "batch 0 in bench": (lambda d, g: [g, "--bench", "--batch", 0], "expected a positive number of images"),
    "batch and images disagree": (lambda d, g: [g, "--batch", 2, "--image", d / "ok.ppm"], "2 but 1 images"),
    "unknown option": (lambda d, g: [g, "--frobnicate"], "unknown option --frobnicate"),
    "unknown runtime": (lambda d, g: [g, "--runtime", "tensorrt"], "expected onnxruntime or openvino"),
    "json into a missing folder": (lambda d, g: [g, "--json", d / "no" / "dir.json"], "does not exist"),
    "tasks on a graph without task selection": (lambda d, g: [g, "--tasks", "coarse4"],
                                                "was compiled without --task-select"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_input_one_line_and_exit_1(cpp_build, cpp_graph, bad_files, tmp_path, case):
    args, needle = BAD[case]
    out = tmp_path / "out.json"
    argv = args(bad_files, cpp_graph)
    r = run([cpp_build.infer, *argv, *([] if "--json" in argv else ["--json", out])])
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("subtune-infer: error: "), r.stderr
    assert needle in lines[0], lines[0]
    assert r.stdout == "" and not out.exists()
    assert not list(tmp_path.glob("out.json.tmp*"))
