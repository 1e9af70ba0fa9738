"""ONNX Runtime: the CPU runtime everything here is verified on, plus the CUDA and TensorRT
execution providers where the installed onnxruntime build has them (onnxruntime-gpu).

    with OnnxrtRunner(SessionFromOnnx("model.onnx", provider="cpu", threads=2)) as runner:
        runner.infer({"images": batch})

    with CompiledGraphRunner(SessionFromOnnx("model.onnx")) as graph:   # a graph subtune compiled
        graph.run(batch, tasks=["dogs"])    # by name; with --task-select, only the tasks asked for

Every session subtune makes comes from make_session (SessionFromOnnx is its lazy loader), so the
providers, threads, optimisation level and the check that the asked provider started are set
in one place. (The Triton python-backend model, serving/models/graph_model.py, makes its own:
it runs in the server's environment, which does not have subtune.)

The CUDA and TensorRT providers are UNRUN here (no GPU on the machines subtune is developed
on); they follow ONNX Runtime's documented provider options. With them, timings include
copying inputs to the GPU and outputs back, as a client handing over NumPy arrays would see.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from subtune.errors import SubtuneError
from subtune.runtimes.base import BaseRunner, TensorSpec

if TYPE_CHECKING:
    import numpy as np

# --provider name -> (execution providers in priority order, what to install when missing)
_PROVIDERS: dict[str, tuple[tuple[str, ...], str]] = {
    "cpu": (("CPUExecutionProvider",), "onnxruntime: pip install onnxruntime"),
    # onnxruntime and onnxruntime-gpu install the same `onnxruntime` package: swap, never add
    # (docs/tensorrt.md, "GPU install")
    "cuda": (("CUDAExecutionProvider", "CPUExecutionProvider"),
             "onnxruntime-gpu in place of onnxruntime (pip uninstall -y onnxruntime && pip install onnxruntime-gpu) "
             "with an NVIDIA driver"),
    "tensorrt": (("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
                 "onnxruntime-gpu in place of onnxruntime (pip uninstall -y onnxruntime && pip install onnxruntime-gpu) "
                 "and TensorRT's libraries ('subtune[tensorrt]') with an NVIDIA driver"),
}
PROVIDER_NAMES = tuple(_PROVIDERS)

_shared_pool_threads: int | None = None  # set once per process by use_shared_thread_pool


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise SubtuneError("onnxruntime is not installed: pip install onnxruntime") from e
    return onnxruntime


def providers_for(provider: str, options: dict[str, dict[str, Any]] | None = None) -> list:
    """The execution-provider list for a --provider name, or a SubtuneError saying what to install."""
    if provider not in _PROVIDERS:
        raise SubtuneError(f"unknown provider {provider!r}: expected one of {', '.join(PROVIDER_NAMES)}")
    wanted, install = _PROVIDERS[provider]
    available = _ort().get_available_providers()
    if wanted[0] not in available:
        raise SubtuneError(f"ONNX Runtime here offers {', '.join(available)}, not {wanted[0]}: "
                           f"--provider {provider} needs {install}")
    options = options or {}
    return [(name, options[name]) if name in options else name for name in wanted if name in available]


def use_shared_thread_pool(threads: int) -> None:
    """Make sessions created with `shared_pool=True` share one intra-op pool of `threads` threads.

    Several sessions timed one after another (one model per task) must not each keep their own
    pool: ONNX Runtime's idle workers spin for a while after a run and steal the cores the next
    session needs. ONNX Runtime fixes the global pool when the process creates its first
    session, so call this before creating any."""
    global _shared_pool_threads
    if _shared_pool_threads == threads:
        return
    if _shared_pool_threads is not None:
        raise SubtuneError(f"the shared ONNX Runtime thread pool already has {_shared_pool_threads} threads "
                           f"in this process; cannot change it to {threads}")
    if threads < 1:
        raise SubtuneError(f"thread count must be at least 1, found {threads}")
    try:
        _ort().set_global_thread_pool_sizes(threads, 1)
    except Exception as e:  # onnxruntime's Fail: the pools were made by an earlier session in this process
        raise SubtuneError(f"cannot size ONNX Runtime's shared thread pool: {str(e).strip()[:200]}") from e
    _shared_pool_threads = threads


OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")  # ONNX Runtime's GraphOptimizationLevel


def make_session(model: bytes | str | Path, *, provider: str = "cpu", threads: int | None = None,
                 shared_pool: bool = False, provider_options: dict[str, dict[str, Any]] | None = None,
                 optimization: str = "all", config: dict[str, str] | None = None, prepack: bool = True,
                 arena: bool = True):
    """The one way subtune makes an ONNX Runtime InferenceSession.

    `model`: serialized ONNX, or a path (external data beside it is found from the path).
    `provider`: a --provider name (providers_for); the session must start on it
    (check_provider_started). `threads`: intra-op threads (default: one per physical core), or
    `shared_pool=True` for the process-wide pool (use_shared_thread_pool). `optimization`: the
    graph optimisation level, one of OPTIMIZATION_LEVELS. `config`: session config entries, e.g.
    {"session.disable_quant_qdq": "1"}. `prepack=False` keeps ONNX Runtime from making a
    prepacked copy of matrix weights, and allocates the weights directly: slower, but a graph over
    2 GiB then stays in memory once. `arena=False`: no CPU memory arena, so memory a run takes is
    given back after it, and, with prepack=False, loading the weights leaves no second copy behind
    (measured: a 520 MB graph took 1.04 GB to load in a process whose heap had held tensors before,
    0.54 GB with both off).
    Runs are sequential (one op at a time, each op on the intra-op threads). A model that does
    not load is a SubtuneError naming it."""
    ort = _ort()
    model = str(model) if isinstance(model, Path) else model
    if isinstance(model, str) and not Path(model).is_file():
        raise SubtuneError(f"model file {model} not found")
    if shared_pool and threads is not None:
        raise ValueError("give threads or shared_pool, not both: the shared pool's size is set once per process")
    if shared_pool and _shared_pool_threads is None:
        raise SubtuneError("shared_pool=True needs use_shared_thread_pool(threads) first")
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization {optimization!r}: expected one of {', '.join(OPTIMIZATION_LEVELS)}")
    providers = providers_for(provider, provider_options)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = {"disabled": level.ORT_DISABLE_ALL, "basic": level.ORT_ENABLE_BASIC,
                                     "extended": level.ORT_ENABLE_EXTENDED, "all": level.ORT_ENABLE_ALL}[optimization]
    if shared_pool:
        opts.use_per_session_threads = False
    elif threads:
        opts.intra_op_num_threads = threads
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
        opts.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    if not arena:
        opts.enable_cpu_mem_arena = False
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    try:
        session = ort.InferenceSession(model, sess_options=opts, providers=providers)
    except Exception as e:  # ORT's load errors (bad protobuf, unsupported op) have no common base class
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        where = model if isinstance(model, str) else "the model"
        raise SubtuneError(f"ONNX Runtime could not load {where}: {first}") from e
    check_provider_started(session, providers)
    return session


class SessionFromOnnx:
    """Loader: a session (make_session) from ONNX bytes or a path, created when called."""

    def __init__(self, model: bytes | str | Path, *, provider: str = "cpu", threads: int | None = None,
                 shared_pool: bool = False, provider_options: dict[str, dict[str, Any]] | None = None,
                 optimization: str = "all", config: dict[str, str] | None = None):
        if shared_pool and threads is not None:
            raise ValueError("give threads or shared_pool, not both: the shared pool's size is set once per process")
        self.model = str(model) if isinstance(model, Path) else model
        self.provider, self.threads, self.shared_pool = provider, threads, shared_pool
        self.provider_options = dict(provider_options or {})
        self.optimization, self.config = optimization, dict(config or {})

    @property
    def settings(self) -> dict[str, Any]:
        threads = (f"shared pool of {_shared_pool_threads}" if self.shared_pool
                   else self.threads if self.threads else "default (one per physical core)")
        settings = {"provider": self.provider, "intra_op_threads": threads, "graph_optimization": self.optimization,
                    "provider_options": self.provider_options}
        return {**settings, "session_config": self.config} if self.config else settings

    def __call__(self):
        return make_session(self.model, provider=self.provider, threads=self.threads, shared_pool=self.shared_pool,
                            provider_options=self.provider_options, optimization=self.optimization, config=self.config)


def check_provider_started(session, providers: list) -> None:
    """ONNX Runtime lists an execution provider whenever its provider library is present, and when
    the provider then cannot start (TensorRT's own libraries missing, seen on an H200 with
    onnxruntime-gpu 1.31) it falls back to the next one with a message on stdout only. A session
    timed or verified as --provider X must run on X: refuse the fallback in one line."""
    wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    used = session.get_providers()
    if not used or used[0] != wanted:
        hint = ("TensorRT's libraries (libnvinfer) are missing or do not match onnxruntime-gpu: install TensorRT "
                "('subtune[tensorrt]') or use --provider cuda" if wanted == "TensorrtExecutionProvider"
                else "check the GPU driver and the CUDA/cuDNN libraries onnxruntime-gpu needs")
        raise SubtuneError(f"ONNX Runtime lists {wanted} but it could not start (the session fell back to "
                           f"{used[0] if used else 'nothing'}): {hint}")


def session_from_bytes(model: bytes | str | Path, *, threads: int | None = None, prepack: bool = True,
                       provider: str = "cpu", arena: bool = True, optimization: str = "all"):
    """make_session for a CPU session made now (the reference runs of verification, the checks
    and the benchmarks)."""
    return make_session(model, provider=provider, threads=threads, prepack=prepack, arena=arena,
                        optimization=optimization)


def every_task_feeds(session, images: "np.ndarray") -> dict[str, "np.ndarray"]:
    """Feeds for `images` that ask for every task on every image: `images`, and for a graph
    compiled with --task-select its mask input (bool [batch, k]) all true."""
    import numpy as np

    feeds = {"images": images}
    for value in session.get_inputs():
        if value.name != "images" and value.type == "tensor(bool)" and len(value.shape) == 2 \
                and isinstance(value.shape[1], int):
            feeds[value.name] = np.ones((len(images), value.shape[1]), dtype=bool)
    return feeds


class OnnxrtRunner(BaseRunner):
    runtime = "onnxruntime"

    def __init__(self, session, name: str | None = None):
        """`session`: an InferenceSession, or a loader such as SessionFromOnnx that makes one."""
        super().__init__(name)
        self._source = session
        self.session = None

    def activate_impl(self) -> None:
        self.session = self._source() if callable(self._source) else self._source
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._invalid_argument = _ort().capi.onnxruntime_pybind11_state.InvalidArgument

    def deactivate_impl(self) -> None:
        self.session = None  # a session we made is freed here; one handed in stays alive with the caller

    def input_metadata_impl(self) -> dict[str, TensorSpec]:
        return {i.name: TensorSpec(tuple(d if isinstance(d, int) else None for d in i.shape), _numpy_type(i.type))
                for i in self.session.get_inputs()}

    def output_names_impl(self) -> list[str]:
        return list(self._output_names)

    def infer_impl(self, feeds: dict[str, "np.ndarray"]) -> dict[str, "np.ndarray"]:
        start = time.perf_counter()
        try:
            outputs = self.session.run(self._output_names, feeds)
        except self._invalid_argument as e:  # wrong shape or dtype: the caller's mistake
            raise SubtuneError(f"{self.name}: {str(e).strip().splitlines()[0][:300]}") from e
        self.inference_time = time.perf_counter() - start
        return dict(zip(self._output_names, outputs))

    def describe_impl(self) -> dict[str, Any]:
        ort = _ort()
        settings = getattr(self._source, "settings", {})
        info = {"version": ort.__version__, **settings}
        if self.session is not None:
            info["execution_providers"] = self.session.get_providers()
        return info


class CompiledGraphRunner(OnnxrtRunner):
    """A graph subtune compiled, run by output and task name (its metadata says what it offers).

        with CompiledGraphRunner(SessionFromOnnx("model.onnx")) as graph:   # or subtune.load_graph
            graph.run(images)                                    # {"base": ..., "dogs": ..., "cats": ...}
            graph.run(images, tasks=["dogs"])                    # every image asks for dogs
            graph.run(images, tasks=[["dogs"], [], ["cats"]])    # per image
            graph.run(images, tasks=mask)                        # bool [batch, k], columns as in .tasks

    Choosing tasks needs a graph compiled with --task-select (input `tasks`, bool [batch, k]):
    each image then computes the base plus only the tasks it asks for, and a task's output is
    NaN in the rows that did not ask for it. `infer(feeds)` (the runner interface) refuses a
    `tasks` feed of the wrong dtype, shape or width in one line, as `run` does."""

    def __init__(self, session, name: str | None = None):
        super().__init__(session, name)
        self.metadata: dict[str, Any] = {}
        self.tasks: list[str] = []  # the task outputs, in order (the mask's columns)
        self.mask_input: str | None = None  # the input choosing tasks per image; None: not a --task-select graph

    def activate_impl(self) -> None:
        from subtune.graph_metadata import GraphMetadataError, decode

        super().activate_impl()
        try:
            self.metadata = decode(self.session.get_modelmeta().custom_metadata_map, self.name)
        except GraphMetadataError as e:
            raise SubtuneError(str(e)) from e
        self.tasks = [str(t["name"]) for t in self.metadata["subtune.tasks"]]
        spec = self.metadata.get("subtune.task_select")
        self.mask_input = str(spec["input"]) if spec else None
        if spec and list(spec["columns"]) != self.tasks:
            raise SubtuneError(f"{self.name}: its task-select columns {spec['columns']} are not its tasks {self.tasks}; "
                               "compile the graph again")

    @property
    def task_select(self) -> bool:
        return self.mask_input is not None

    def run(self, images: "np.ndarray", tasks=None) -> dict[str, "np.ndarray"]:
        """Every output for `images` (float32 [batch, 3, H, W]). `tasks` (a --task-select graph
        only): None for every task on every image; a task name or a list of names, for every
        image; a list with one list of names per image; or a bool mask [batch, k]."""
        import numpy as np

        self._require_active("run")
        images = np.asarray(images)
        if images.ndim != 4:
            raise SubtuneError(f"{self.name}: images must be [batch, 3, H, W], found shape {list(images.shape)}")
        feeds = {"images": images}
        if self.mask_input is not None:
            feeds[self.mask_input] = self.mask(tasks, len(images))
        elif tasks is not None:
            raise SubtuneError(f"{self.name} was compiled without --task-select: every image computes every task; "
                               "recompile it with --task-select to choose tasks per image")
        return self.infer(feeds)

    def mask(self, tasks, batch: int) -> "np.ndarray":
        """The `tasks` input for `batch` images asking for `tasks` (the forms `run` takes)."""
        import numpy as np

        k = len(self.tasks)
        if tasks is None:
            return np.ones((batch, k), dtype=bool)
        if isinstance(tasks, str):
            tasks = [tasks]
        if isinstance(tasks, np.ndarray):
            self._check_mask(tasks, batch)
            return tasks
        tasks = list(tasks)
        if all(isinstance(t, str) for t in tasks):  # the same tasks for every image
            row = np.zeros(k, dtype=bool)
            row[np.array([self._column(t) for t in tasks], dtype=np.intp)] = True
            return np.broadcast_to(row, (batch, k)).copy()
        if len(tasks) != batch or not all(isinstance(t, (list, tuple, set)) for t in tasks):
            raise SubtuneError(f"{self.name}: tasks per image must be one list of task names per image ({batch} "
                               f"lists), found {len(tasks)} entries; or give task names for every image, or a bool "
                               f"mask [{batch}, {k}]")
        mask = np.zeros((batch, k), dtype=bool)
        for row, names in enumerate(tasks):
            mask[row, np.array([self._column(t) for t in names], dtype=np.intp)] = True
        return mask

    def infer_impl(self, feeds: dict[str, "np.ndarray"]) -> dict[str, "np.ndarray"]:
        if self.mask_input is not None and self.mask_input in feeds:
            self._check_mask(feeds[self.mask_input], len(feeds["images"]) if "images" in feeds else None)
        return super().infer_impl(feeds)

    def _column(self, task) -> int:
        if task not in self.tasks:
            raise SubtuneError(f"{self.name}: no task {task!r}; its tasks are {', '.join(self.tasks)}")
        return self.tasks.index(task)

    def _check_mask(self, mask, batch: int | None) -> None:
        import numpy as np

        k = len(self.tasks)
        expected = f"[{batch if batch is not None else 'batch'}, {k}]"
        found = f"{getattr(mask, 'dtype', type(mask).__name__)} of shape {list(np.shape(mask))}"
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 2 or mask.shape[1] != k \
                or (batch is not None and mask.shape[0] != batch):
            raise SubtuneError(f"{self.name}: input {self.mask_input!r} must be a bool array {expected} (one row per "
                               f"image, one column per task: {', '.join(self.tasks)}), found {found}; build it with "
                               "the runner's mask(task names, batch)")


def _numpy_type(onnx_type: str) -> str:
    """'tensor(float)' -> 'float32'."""
    inner = onnx_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64", "float16": "float16", "int64": "int64", "int32": "int32",
            "int8": "int8", "uint8": "uint8", "bool": "bool"}.get(inner, inner)
