"""The C++ library and CLI (cpp/), built once per session, and a small compiled graph to run.

The build goes to build/cpp-tests/ in the checkout (gitignored; incremental across runs) and
provisions its SDK with cpp/get_sdk.sh into ~/.cache/subtune/cpp-sdk (or $SUBTUNE_SDK_DIR):
the first run downloads two small Debian packages, later runs are offline. Without a C++
compiler or CMake the tests skip with that reason; any other build failure fails them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "cpp-tests"
BUILD_TIMEOUT_S = 600

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
COARSE = ["tops", "bottoms", "footwear", "bags"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIZE = (32, 32)


def sdk_dir() -> Path:
    """Where cpp/get_sdk.sh provisions the SDK (as CMake and the script choose it)."""
    return Path(os.environ.get("SUBTUNE_SDK_DIR") or Path.home() / ".cache" / "subtune" / "cpp-sdk")


def ninja_generator(build: Path) -> list[str]:
    """-G Ninja where ninja is installed (and the folder was not configured for Make before)."""
    return ["-G", "Ninja"] if shutil.which("ninja") and not (build / "Makefile").exists() else []


@dataclasses.dataclass
class CppBuild:
    build_dir: Path
    infer: Path
    model_test: Path
    example: Path
    env: dict
    runtimes: list[str]  # what this build runs: onnxruntime, and openvino where CMake found it

    def require(self, runtime: str) -> None:
        if runtime not in self.runtimes:
            pytest.skip(f"this C++ build has no {runtime} runtime (pip install openvino and rebuild to add it)")


def _compiler() -> str | None:
    return os.environ.get("CXX") if os.environ.get("CXX") and shutil.which(os.environ["CXX"]) else \
        shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@pytest.fixture(scope="session")
def cpp_build() -> CppBuild:
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (c++, g++ or clang++) on PATH: the C++ build cannot run here")
    if shutil.which("cmake") is None:
        pytest.skip("no cmake on PATH: the C++ build cannot run here (apt-get install cmake)")
    env = dict(os.environ, CXX=cxx)
    steps = [["cmake", "-S", str(ROOT / "cpp"), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release", *ninja_generator(BUILD)],
             ["cmake", "--build", str(BUILD), "-j", "2"]]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT_S)
        if r.returncode != 0:
            pytest.fail(f"C++ build step failed: {' '.join(cmd)}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    model_test = BUILD / "subtune-model-test"
    runtimes = subprocess.run([str(model_test), "runtimes"], capture_output=True, text=True, timeout=60).stdout.split()
    return CppBuild(BUILD, BUILD / "subtune-infer", model_test, BUILD / "subtune-example-classify", env, runtimes)


@pytest.fixture(scope="session")
def cpp_tasks():
    """tiny_resnet base + two tasks with class names and preprocessing (one overlapping the other):
    what both session graphs are compiled from."""
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", seed=0)
    _, bb = base.build()
    pre = {"image_size": list(SIZE), "mean": MEAN, "std": STD, "channels": 3}
    tasks = []
    for seed, (name, blocks, classes) in enumerate([("fashion10", [5, 6], FASHION), ("coarse4", [6, 7], COARSE)], 1):
        t = synthetic_task(base, name, blocks, num_classes=len(classes), seed=seed, backbone=bb)
        tasks.append(dataclasses.replace(t, classes=list(classes), meta={**t.meta, "preprocess": pre}))
    return base, tasks


def _compile(base_and_tasks, folder: Path, **options) -> Path:
    from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
    from subtune.compiler.plan import Plan

    base, tasks = base_and_tasks
    plan = Plan(base, list(tasks), input_size=SIZE)  # compile_plan fills the plan in: a fresh one each time
    compiled = compile_plan(plan, CompileOptions(verify=False, check_tensorrt=False, **options))
    path = folder / "model.onnx"
    path.write_bytes(serialize(compiled))
    return path


@pytest.fixture(scope="session")
def cpp_graph(cpp_tasks, tmp_path_factory) -> Path:
    """cpp_tasks compiled to one graph: what a C++ service would be handed."""
    return _compile(cpp_tasks, tmp_path_factory.mktemp("cpp_graph"))


@pytest.fixture(scope="session")
def task_select_graph(cpp_tasks, tmp_path_factory) -> Path:
    """cpp_tasks compiled with --task-select: inputs images and tasks (bool [batch, 2], one column
    per task in output order); a task's output is NaN in the rows that did not ask for it."""
    return _compile(cpp_tasks, tmp_path_factory.mktemp("task_select_graph"), task_select=True)


@pytest.fixture(scope="session")
def external_data_graph(cpp_graph, tmp_path_factory) -> Path:
    """cpp_graph saved as ONNX files over 2 GiB are: the graph in model.onnx, its weights in
    model.onnx.data beside it (forced here on the small graph)."""
    import onnx_ir as ir

    from subtune.compiler.export import save_onnx

    path = tmp_path_factory.mktemp("external_data") / "model.onnx"
    written = save_onnx(ir.load(str(cpp_graph)), path, external_data=True)
    assert written == [path, path.with_name("model.onnx.data")]
    return path


@pytest.fixture(scope="session")
def int64_output_graph(cpp_graph, tmp_path_factory) -> Path:
    """cpp_graph with its coarse4 output cast to int64, as an edit after compiling would leave it:
    the same output names and metadata, one output that is not float32."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(cpp_graph))
    graph = model.graph
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == "coarse4":
                node.output[i] = "coarse4_logits"
    graph.node.append(helper.make_node("Cast", ["coarse4_logits"], ["coarse4"], to=TensorProto.INT64))
    next(o for o in graph.output if o.name == "coarse4").type.tensor_type.elem_type = TensorProto.INT64
    path = tmp_path_factory.mktemp("int64_output") / "model.onnx"
    onnx.save(model, str(path))
    return path


RUN_TIMEOUT_S = 120


def run(cmd, timeout: float = RUN_TIMEOUT_S, **kw) -> subprocess.CompletedProcess:
    """A built program or a command, its output captured as text, bounded in time."""
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max |ref|, as the compiler's verification measures it (0 for empty arrays)."""
    return float(np.max(np.abs(a - ref)) / max(float(np.max(np.abs(ref))), 1e-12)) if ref.size else 0.0


def single_thread_session(graph: Path):
    """Python's ONNX Runtime on `graph`, the reference the C++ library is compared with."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(graph), sess_options=opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def python_session(cpp_graph):
    return single_thread_session(cpp_graph)


def graph_metadata(path: Path) -> dict:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    as_json = {"subtune.outputs", "subtune.tasks", "subtune.input_size", "subtune.preprocess", "subtune.verified"}
    return {k: json.loads(v) if k in as_json else v for k, v in props.items() if k.startswith("subtune.")}


def write_images(folder: Path) -> list[Path]:
    """Files of several sizes and kinds, named so that sorted order is the CLI order."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir()
    smooth = lambda h, w, c: (np.clip(rng.normal(128, 60, (h, w, c)), 0, 255)).astype(np.uint8)  # noqa: E731
    Image.fromarray(smooth(32, 32, 3)).save(folder / "a_exact.png")              # no resize
    Image.fromarray(smooth(57, 45, 3)).save(folder / "b_shrink.ppm")             # antialiased downscale
    Image.fromarray(smooth(20, 27, 1)[..., 0], mode="L").save(folder / "c_grey_up.pgm")  # grey, upscale
    Image.fromarray(smooth(32, 71, 3)).save(folder / "d_wide.png")               # width only
    return sorted(folder.iterdir())


@pytest.fixture(scope="session")
def cpp_images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("cpp_images") / "imgs")


def python_images(folder: Path) -> np.ndarray:
    """The images of a folder as subtune's Python loader preprocesses them, [n, 3, H, W]."""
    from subtune.training.data import load_dataset

    return load_dataset(f"images:{folder}", "pool", image_size=SIZE, mean=MEAN, std=STD).images.numpy()
