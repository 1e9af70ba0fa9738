"""TensorRT: engine building through Polygraphy's loaders (strongly typed for QDQ/FP16 graphs),
a check of a built engine against its ONNX graph in ONNX Runtime (`compare_engine`), and a
runner for `.plan` engines, for TensorRT 10 and 11 (both use the name-based I/O tensor API:
set_input_shape, set_tensor_address, execute_async_v3).

    with TrtRunner(EngineFromPath("model.plan"), cuda_graph=True) as runner:
        runner.infer({"images": batch})

UNRUN: TensorRT cannot be installed on the CPU-only machines subtune is developed and tested
on (PyPI's TensorRT library wheels download from NVIDIA's index, which is unreachable there),
and no GPU was available. This code follows the documented TensorRT and Polygraphy APIs; its
tests are marked `gpu` and skip without TensorRT and a CUDA device.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from subtune.atomic import atomic_path
from subtune.errors import SubtuneError
from subtune.runtimes.base import BaseRunner, TensorSpec

if TYPE_CHECKING:
    import numpy as np
    import onnx

# The ONNX graph an engine was built from (engine.onnx, written beside engine.plan) records the
# engine under this metadata key (declared in subtune/graph_metadata.schema.json): {"sha256": the
# engine file's, "graph_sha256": the ONNX graph's (onnx_graph_sha256), "batch_range": [min, opt,
# max]}. The engine carries the graph's hash back: it is the TensorRT network's name, which a
# deserialized engine reports (ICudaEngine.name).
ENGINE_KEY = "subtune.engine"


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT and a CUDA GPU are usable here, else why not (one line)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'subtune[tensorrt]' on a machine with NVIDIA's index)"
    try:
        import tensorrt as trt

        if trt.Builder(trt.Logger(trt.Logger.ERROR)) is None:  # None or an exception: no usable GPU
            return "TensorRT could not create a builder (no CUDA device?)"
    except Exception as e:  # noqa: BLE001 - any failure here means "no usable GPU"
        return f"TensorRT cannot use a GPU here ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
    return None


def parse_batch_range(text: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise SubtuneError(f"--batch-range expects MIN,OPT,MAX (e.g. 1,8,32), found {text!r}") from None
    return check_batch_range((lo, opt, hi))


def check_batch_range(batch_range) -> tuple[int, int, int]:
    values = tuple(batch_range)
    if len(values) != 3 or not all(isinstance(v, int) for v in values) or not 1 <= values[0] <= values[1] <= values[2]:
        raise SubtuneError(f"batch range needs MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, found {list(values)}")
    return values


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, input_size: tuple[int, int],
                 batch_range: tuple[int, int, int] = (1, 8, 32), workspace_gib: float = 4.0,
                 sample_shape: tuple[int, ...] | None = None, strongly_typed: bool = False,
                 network_name: str | None = None) -> None:
    """Parse the ONNX file (external data beside it is found from its path) and build a
    serialized engine, written atomically, with one dynamic-batch profile for its input
    `images`, of shape [batch, 3, H, W], or [batch, *sample_shape] when given (the benchmark's
    sub-models take features, not images).

    No precision flags: reduced precision comes from the ONNX graph itself (an FP16 graph, or
    QDQ nodes). `strongly_typed` (for such graphs) makes TensorRT 10 keep every tensor's type
    from the graph instead of choosing kernels freely, which may run a QDQ/FP16 graph in fp32;
    TensorRT 11 networks are strongly typed always. FP32 graphs build with TF32 off
    (Polygraphy's default), so the engine's arithmetic is the graph's. Polygraphy and TensorRT
    failures become one-line SubtuneErrors. `network_name` names the network, and so the engine
    (`ICudaEngine.name` after deserializing): the compiler gives it the ONNX graph's hash, which
    ties the engine to the graph it was built from (check_engine_pair)."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise SubtuneError(f"cannot build a TensorRT engine: {reason}; compile with -o model.onnx for the CPU path")
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    lo, opt, hi = check_batch_range(batch_range)
    h, w = input_size
    sample = tuple(sample_shape) if sample_shape else (3, h, w)
    # TensorRT 11 is strongly typed by default and may have dropped the creation flag.
    typed = strongly_typed and int(trt.__version__.split(".")[0]) < 11
    try:
        profile = Profile().add("images", min=(lo, *sample), opt=(opt, *sample), max=(hi, *sample))
        config = CreateConfig(profiles=[profile],
                              memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_gib * (1 << 30))})
        network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=typed)
        if network_name is not None:
            network = _named_network(network, network_name)
        with atomic_path(engine_path) as tmp:
            SaveEngine(EngineFromNetwork(network, config=config), path=str(tmp))()
    except SubtuneError:
        raise
    except Exception as e:  # PolygraphyException, and TensorRT's own errors (no common base class)
        raise SubtuneError(f"TensorRT could not build an engine from {onnx_path}: {_first_line(e)}; "
                           "rerun with --debug for TensorRT's log") from e
    if not Path(engine_path).is_file():
        raise SubtuneError(f"TensorRT did not produce {engine_path}")


def _named_network(loader, name: str):
    """A Polygraphy network loader whose network is named `name` (EngineFromNetwork takes any
    callable that returns (builder, network, parser))."""

    def load():
        builder, network, *rest = loader()
        network.name = name
        return (builder, network, *rest)

    return load


# --------------------------------------------------------------------------- engine and ONNX: a pair


def onnx_graph_sha256(model: "onnx.ModelProto | str | os.PathLike") -> str:
    """The identity of an ONNX graph: sha256 of `ModelProto.graph`, serialized deterministically.
    The model-level metadata lies outside the graph, so recording an engine there leaves the hash
    as it was; with external data the graph holds the weights' locations, not their bytes."""
    if isinstance(model, (str, os.PathLike)):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    path = Path(path)
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:  # cached per version of the file: engines are large
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *,
                  batch_range: tuple[int, int, int], graph_sha256: str) -> dict:
    """Write the engine's identity into the metadata of the ONNX file it was built from (the
    file is rewritten in place; external data beside it stays as it is). Returns the record."""
    import onnx

    from subtune.graph_metadata import encode

    model = onnx.load(str(onnx_path), load_external_data=False)
    if onnx_graph_sha256(model) != graph_sha256:
        raise RuntimeError(f"{onnx_path} changed between the engine build and its record")  # a bug
    record = {"sha256": file_sha256(engine_path), "graph_sha256": graph_sha256,
              "batch_range": list(check_batch_range(batch_range))}
    props = [p for p in model.metadata_props if p.key != ENGINE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=ENGINE_KEY, value=encode({ENGINE_KEY: record})[ENGINE_KEY])
    onnx.save_model(model, str(onnx_path))
    return record


@dataclass(frozen=True)
class EnginePair:
    """An engine and the ONNX graph it was built from, checked to belong together."""

    engine: Path
    onnx: Path
    sha256: str  # the engine file's
    graph_sha256: str  # the ONNX graph's, which is also the engine's network name
    batch_range: tuple[int, int, int]  # the engine's profile for `images`: min, opt, max batch
    checked_by_tensorrt: bool  # the engine was deserialized here and named the graph (else: hashes only)


def check_engine_pair(engine_path: str | os.PathLike, model: "onnx.ModelProto",
                      onnx_path: str | os.PathLike) -> EnginePair:
    """Refuse an engine and an engine.onnx that do not belong together: the ONNX must record the
    engine (ENGINE_KEY) with the engine file's sha256, and its own graph must hash to the graph the
    engine was built from. Where TensorRT is usable the engine is also deserialized: its name must
    be that graph hash and its batch profile the recorded one. `model`: the ONNX, loaded without
    its external data."""
    engine_path, onnx_path = Path(engine_path), Path(onnx_path)
    fix = f"compile again (subtune-compile ... -o {engine_path.name} writes both) and keep the two files together"
    raw = next((p.value for p in model.metadata_props if p.key == ENGINE_KEY), None)
    if raw is None:
        raise SubtuneError(f"{onnx_path} records no engine ({ENGINE_KEY}): it is not the ONNX graph {engine_path.name} "
                           f"was built from; {fix}")
    from subtune.graph_metadata import check, keys

    try:
        record = json.loads(raw)
    except ValueError:
        record = raw
    problem = check(record, keys()[ENGINE_KEY]["schema"], ENGINE_KEY)
    if problem:
        raise SubtuneError(f"{onnx_path}: its engine record is not one: {problem}; {fix}")
    sha, graph_sha = record["sha256"], record["graph_sha256"]
    try:
        batch_range = check_batch_range(tuple(record["batch_range"]))
    except SubtuneError as e:
        raise SubtuneError(f"{onnx_path}: its {ENGINE_KEY} batch_range: {e}; {fix}") from None
    if onnx_graph_sha256(model) != graph_sha:
        raise SubtuneError(f"{onnx_path}: its graph is not the one {engine_path.name} was built from (the graph hash "
                           f"differs from the recorded {graph_sha[:12]}: edited after the compile?); {fix}")
    found = file_sha256(engine_path)
    if found != sha:
        raise SubtuneError(f"{engine_path} is not the engine {onnx_path.name} was built into (sha256 {found[:12]}, "
                           f"the ONNX records {sha[:12]}): the two files come from different compiles; {fix}")
    checked = tensorrt_unavailable_reason() is None
    if checked:
        name, profile = engine_identity(engine_path)
        if name != graph_sha:
            raise SubtuneError(f"{engine_path} was built from another graph (its network name {name[:64]!r} is "
                               f"not the graph hash of {onnx_path.name}, {graph_sha[:12]}); {fix}")
        if profile != batch_range:
            raise SubtuneError(f"{engine_path}: its batch profile {list(profile)} is not the recorded "
                               f"{list(batch_range)}; {fix}")
    return EnginePair(engine_path, onnx_path, sha, graph_sha, batch_range, checked)


def engine_identity(engine_path: str | os.PathLike, input_name: str = "images") -> tuple[str, tuple[int, int, int]]:
    """(network name, (min, opt, max) batch of `input_name`'s first profile) of an engine file;
    needs TensorRT (deserializes the engine; no GPU memory is allocated for running it)."""
    loader = EngineFromPath(engine_path)  # holds the runtime, which must outlive the engine
    engine = loader()
    try:
        lo, opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(input_name, 0))
    except Exception as e:  # noqa: BLE001 - no such input, or no profile: not an engine subtune built
        raise SubtuneError(f"{engine_path}: no optimisation profile for input {input_name!r} ({_first_line(e)}); "
                           "expected an engine built by subtune-compile") from e
    return str(engine.name), (int(lo[0]), int(opt[0]), int(hi[0]))


def check_max_batch_size(engine_path: str | os.PathLike, batch_range, max_batch_size: int) -> None:
    """Triton sends an engine any batch from 1 to `max_batch_size`: each must be inside the
    engine's batch profile `batch_range` (min, opt, max)."""
    name, (lo, _, hi) = Path(engine_path).name, batch_range
    if max_batch_size > hi:
        raise SubtuneError(f"`max_batch_size` {max_batch_size} exceeds the largest batch {name} takes ({hi}, its batch "
                           f"profile {lo}..{hi}): lower it to {hi} or less, or build the engine with a larger "
                           "`batch_range` MAX")
    if lo > 1:
        raise SubtuneError(f"{name} takes batches {lo}..{hi}, and Triton sends any batch from 1 to `max_batch_size`: "
                           "build the engine with `batch_range` MIN 1")


def compare_engine(engine_path: str | os.PathLike, onnx_path: str | os.PathLike, output_names: list[str], *,
                   input_size: tuple[int, int], batches: tuple[int, ...], tolerance: float,
                   seed: int = 0) -> list[dict]:
    """Run the engine and the ONNX graph (ONNX Runtime CPU, the verified reference) on the same
    seeded images at each batch size; raise VerificationError when any output differs by more
    than `tolerance` (max |error| / max |reference|). Returns one row per output and batch."""
    import numpy as np

    from subtune.errors import VerificationError
    from subtune.runtimes.onnxruntime import session_from_bytes

    session = session_from_bytes(str(onnx_path))
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    with TrtRunner(EngineFromPath(engine_path), name=Path(engine_path).name) as runner:
        for batch in batches:
            images = rng.standard_normal((batch, 3, *input_size), dtype=np.float32)
            want = dict(zip(output_names, session.run(output_names, {"images": images})))
            got = runner.infer({"images": images})
            for name in output_names:
                ref = want[name].astype(np.float64)
                out = np.asarray(got[name], dtype=np.float64)
                if out.shape != ref.shape:
                    raise VerificationError(f"engine output {name!r} at batch {batch}: shape {out.shape}, "
                                            f"the ONNX graph gives {ref.shape}")
                err, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
                rows.append({"batch": batch, "output": name, "max_abs_error": err, "scale": scale,
                             "relative_error": err / max(scale, 1e-12)})
    bad = [r for r in rows if not r["relative_error"] <= tolerance]
    if bad:
        worst = max(bad, key=lambda r: r["relative_error"])
        error = VerificationError(
            f"the TensorRT engine differs from the verified ONNX graph: output {worst['output']!r} at batch "
            f"{worst['batch']} by {worst['relative_error']:.2e} (relative), tolerance {tolerance:.0e}; no engine written")
        error.checks = rows
        raise error
    return rows


# --------------------------------------------------------------------------- running engines


class EngineFromPath:
    """Loader: a deserialized engine from a `.plan` file, made when called."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._runtime = None  # kept alive as long as the loader: engines must not outlive their runtime

    def __call__(self):
        if not self.path.is_file():
            raise SubtuneError(f"engine file {self.path} not found")
        reason = tensorrt_unavailable_reason()
        if reason:
            raise SubtuneError(f"cannot run {self.path}: {reason}")
        import tensorrt as trt

        self._runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise SubtuneError(f"{self.path}: TensorRT {trt.__version__} could not deserialize the engine; engines only "
                               "load with the TensorRT version and GPU they were built for, so rebuild it here")
        return engine


class TrtRunner(BaseRunner):
    """Runs an engine with device buffers sized to the current input shapes (dynamic batch).

    Buffers are torch CUDA tensors, so no CUDA Python binding beyond torch is needed. With
    `cuda_graph=True` each new input shape is run once normally (TensorRT finishes its
    shape-dependent setup on that run, which cannot be captured), then captured into a CUDA
    graph that later calls replay. `inference_time` covers the device execution only; the host
    to device copies of inputs and outputs happen outside it.

    UNRUN: no GPU and no TensorRT where this was written; see the module docstring.
    """

    runtime = "tensorrt"

    def __init__(self, engine, *, cuda_graph: bool = False, name: str | None = None):
        """`engine`: an ICudaEngine, or a loader such as EngineFromPath that makes one."""
        super().__init__(name)
        self._source = engine
        self.cuda_graph = cuda_graph
        self.engine = self.context = self._stream = None

    def activate_impl(self) -> None:
        reason = tensorrt_unavailable_reason()
        if reason:
            raise SubtuneError(f"cannot run a TensorRT engine: {reason}")
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise SubtuneError("the TensorRT runner needs a CUDA GPU visible to torch (torch.cuda.is_available() is False)")
        self.engine = self._source() if callable(self._source) else self._source
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise SubtuneError("TensorRT could not create an execution context (out of GPU memory?)")
        self._stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._output_names = [n for n in names if n not in self._input_names]
        self._np_dtypes = {n: trt.nptype(self.engine.get_tensor_dtype(n)) for n in names}
        self._bound_shapes = None  # input shapes the buffers, addresses and graph were made for
        self._buffers: dict[str, Any] = {}
        self._graph = None

    def deactivate_impl(self) -> None:
        self._graph = None
        self._buffers = {}
        self.context = None
        self._stream = None
        self.engine = None

    def input_metadata_impl(self) -> dict[str, TensorSpec]:
        import numpy as np

        return {n: TensorSpec(tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(n)),
                              np.dtype(self._np_dtypes[n]).name) for n in self._input_names}

    def output_names_impl(self) -> list[str]:
        return list(self._output_names)

    def infer_impl(self, feeds: dict[str, "np.ndarray"]) -> dict[str, "np.ndarray"]:
        import torch

        shapes = tuple(tuple(feeds[n].shape) for n in self._input_names)
        with torch.cuda.stream(self._stream):
            if shapes != self._bound_shapes:
                self._bind(dict(zip(self._input_names, shapes)))
            for n in self._input_names:
                self._buffers[n].copy_(torch.from_numpy(feeds[n]))
            start = time.perf_counter()
            if self._graph is not None:
                self._graph.replay()
            elif not self.context.execute_async_v3(self._stream.cuda_stream):
                raise SubtuneError(f"{self.name}: TensorRT failed to enqueue the engine")
            self._stream.synchronize()
            self.inference_time = time.perf_counter() - start
            return {n: self._buffers[n].cpu().numpy() for n in self._output_names}

    def _bind(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Set input shapes, allocate buffers for them and the outputs they imply, give TensorRT
        their addresses, and (optionally) capture the graph for this shape."""
        import numpy as np
        import torch

        self._graph = None
        buffers = {}
        for n, shape in shapes.items():
            if not self.context.set_input_shape(n, shape):
                lo, _, hi = self.engine.get_tensor_profile_shape(n, 0)
                raise SubtuneError(f"{self.name}: input {n!r} shape {shape} is outside the engine's profile "
                                   f"({tuple(lo)} .. {tuple(hi)}); rebuild with a wider --batch-range")
            buffers[n] = torch.empty(shape, dtype=_torch_dtype(self._np_dtypes[n]), device="cuda")
        for n in self._output_names:
            shape = tuple(self.context.get_tensor_shape(n))
            buffers[n] = torch.empty(shape, dtype=_torch_dtype(self._np_dtypes[n]), device="cuda")
        for n, buf in buffers.items():
            self.context.set_tensor_address(n, buf.data_ptr())
        self._buffers, self._bound_shapes = buffers, tuple(shapes.values())
        if self.cuda_graph:
            for n in self._input_names:
                buffers[n].copy_(torch.from_numpy(np.zeros(shapes[n], dtype=self._np_dtypes[n])))
            self.context.execute_async_v3(self._stream.cuda_stream)  # uncaptured first run at this shape
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=self._stream):
                    self.context.execute_async_v3(self._stream.cuda_stream)
            except RuntimeError as e:
                raise SubtuneError(f"{self.name}: this engine cannot be captured in a CUDA graph ({str(e)[:200]}); "
                                   "run without --cuda-graph") from e
            self._graph = graph

    def describe_impl(self) -> dict[str, Any]:
        info: dict[str, Any] = {"cuda_graph": self.cuda_graph, "timing": "device execution (copies outside)"}
        if importlib.util.find_spec("tensorrt") is not None:
            import tensorrt as trt

            info["version"] = trt.__version__
        if self.engine is not None:
            import torch

            info["device"] = torch.cuda.get_device_name()
            info["profile"] = {n: [list(s) for s in self.engine.get_tensor_profile_shape(n, 0)]
                               for n in self._input_names}
        return info


def _torch_dtype(np_dtype):
    import numpy as np
    import torch

    return torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype
