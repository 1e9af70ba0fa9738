"""What a compiled graph offers a server: its input, its outputs with their shapes, and the
subtune metadata the compiler attached, read through subtune.graph_metadata (its one definition)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from subtune.errors import SubtuneError
from subtune.graph_metadata import GraphMetadataError, decode

ENGINE_SUFFIXES = (".plan", ".engine")


@dataclass
class Tensor:
    name: str
    dtype: str  # Triton's name without TYPE_: FP32, FP16, INT64 ...
    dims: list[int]  # without the batch dimension; -1 where dynamic


@dataclass
class GraphInfo:
    path: Path  # the file served (.onnx, or the engine)
    onnx_path: Path  # the ONNX graph the metadata comes from (the engine's own source for a .plan)
    inputs: list[Tensor]
    outputs: list[Tensor]
    metadata: dict[str, object] = field(default_factory=dict)  # subtune.* keys, decoded and checked (graph_metadata)
    external_data: list[str] = field(default_factory=list)  # weight files beside the ONNX (relative names)

    @property
    def is_engine(self) -> bool:
        return self.path.suffix in ENGINE_SUFFIXES

    @property
    def task_select(self) -> dict | None:
        """`subtune.task_select` of a graph compiled with --task-select (its mask input's name,
        dtype, columns and fill), None for a plain graph."""
        spec = self.metadata.get("subtune.task_select")
        return spec if isinstance(spec, dict) else None

    @property
    def mask_input(self) -> Tensor | None:
        """The input choosing tasks per image (a --task-select graph), None for a plain graph."""
        spec = self.task_select
        return next((t for t in self.inputs if t.name == spec["input"]), None) if spec else None

    @property
    def image_input(self) -> Tensor:
        """The images input: the one input that is not the task mask."""
        mask = self.mask_input
        images = [t for t in self.inputs if mask is None or t.name != mask.name]
        if len(images) != 1:
            expected = "images" + (f" and {mask.name}" if mask is not None else "")
            raise SubtuneError(f"{self.onnx_path}: expected the inputs {expected}, found "
                               f"{', '.join(t.name for t in self.inputs)}; compile it again with subtune-compile")
        return images[0]

    @property
    def tasks(self) -> list[dict]:
        tasks = self.metadata.get("subtune.tasks")
        return tasks if isinstance(tasks, list) else []

    def classes(self, output: str) -> list[str] | None:
        for t in self.tasks:
            if isinstance(t, dict) and t.get("name") == output and t.get("classes"):
                return [str(c) for c in t["classes"]]
        return None

    def preprocess(self) -> dict:
        """The one preprocessing every task of the graph was trained with (meta["preprocess"])."""
        pre = self.metadata.get("subtune.preprocess")
        if not isinstance(pre, dict) or not pre:
            raise SubtuneError(f"{self.onnx_path}: the graph records no preprocessing (no subtune.preprocess "
                               "metadata: its tasks were not trained with `subtune train`); serve tensors "
                               "instead (omit --preprocess)")
        distinct = {json.dumps(v, sort_keys=True) for v in pre.values()}
        if len(distinct) > 1:
            raise SubtuneError(f"{self.onnx_path}: tasks {', '.join(sorted(pre))} were trained with different "
                               "preprocessing, and one ensemble can apply only one; serve tensors instead "
                               "(omit --preprocess) or compile the tasks separately")
        p = next(iter(pre.values()))
        try:
            h, w = (int(v) for v in p["image_size"])
            mean, std = [float(v) for v in p["mean"]], [float(v) for v in p["std"]]
        except (KeyError, TypeError, ValueError) as e:
            raise SubtuneError(f"{self.onnx_path}: subtune.preprocess {p!r} lacks image_size/mean/std") from e
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise SubtuneError(f"{self.onnx_path}: subtune.preprocess needs 3 means and 3 positive stds, found {p!r}")
        return {"image_size": [h, w], "mean": mean, "std": std}


_ONNX_TYPES = {1: "FP32", 10: "FP16", 11: "FP64", 16: "BF16", 2: "UINT8", 3: "INT8", 5: "INT16", 6: "INT32",
               7: "INT64", 9: "BOOL"}


def read_graph(path: str | Path) -> GraphInfo:
    """A compiled .onnx, or an engine with the ONNX it was built from beside it (subtune-compile
    -o engine.plan writes engine.onnx next to it)."""
    path = Path(path)
    if not path.is_file():
        raise SubtuneError(f"{path}: no such file; expected a compiled model.onnx or engine.plan")
    if path.suffix in ENGINE_SUFFIXES:
        onnx_path = path.with_suffix(".onnx")
        if not onnx_path.is_file():
            raise SubtuneError(f"{path}: a TensorRT engine's inputs, outputs and metadata are read from the ONNX "
                               f"it was built from, expected beside it as {onnx_path}; keep that file "
                               "(subtune-compile -o engine.plan writes it)")
    elif path.suffix == ".onnx":
        onnx_path = path
    else:
        raise SubtuneError(f"{path}: expected a compiled .onnx graph or a .plan/.engine TensorRT engine")
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise SubtuneError(f"{onnx_path}: not a readable ONNX file ({type(e).__name__}); "
                           "compile it again with subtune-compile") from e
    if onnx_path != path:  # an engine and the ONNX beside it must be one compile's pair
        from subtune.runtimes.tensorrt import check_engine_pair

        check_engine_pair(path, model, onnx_path)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_tensor(v, onnx_path) for v in model.graph.input if v.name not in initializers]
    outputs = [_tensor(v, onnx_path) for v in model.graph.output]
    if not inputs or not outputs:
        raise SubtuneError(f"{onnx_path}: the graph has no inputs or no outputs; compile it again")
    try:
        meta = decode({p.key: p.value for p in model.metadata_props}, str(onnx_path))
    except GraphMetadataError as e:
        raise SubtuneError(str(e)) from None
    external = sorted({e.value for t in _initializers(model.graph) for e in t.external_data if e.key == "location"})
    for name in external:
        if Path(name).is_absolute() or ".." in Path(name).parts or not (onnx_path.parent / name).is_file():
            raise SubtuneError(f"{onnx_path}: its weights file {name!r} is not beside it; keep the .onnx and its "
                               ".data file together")
    info = GraphInfo(path, onnx_path, inputs, outputs, meta, external)
    _check_task_select(info)
    return info


def _check_task_select(graph: GraphInfo) -> None:
    """A --task-select graph's mask input is what its metadata says: bool [batch, k], one column per
    task output, in output order."""
    spec = graph.task_select
    if spec is None:
        return
    mask = graph.mask_input
    tasks = [t.name for t in graph.outputs if t.name != "base"]
    if mask is None or mask.dtype != "BOOL" or mask.dims not in ([len(tasks)], [-1]) or list(spec["columns"]) != tasks:
        found = f"input {mask.name} {mask.dtype} {mask.dims}" if mask is not None else f"no input {spec['input']!r}"
        raise SubtuneError(f"{graph.onnx_path}: its metadata says input {spec['input']!r} (bool, one column per task: "
                           f"{', '.join(spec['columns'])}) chooses tasks, found {found} and task outputs "
                           f"{', '.join(tasks)}; compile it again with subtune-compile --task-select")


def _initializers(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def _tensor(value, path: Path) -> Tensor:
    t = value.type.tensor_type
    dtype = _ONNX_TYPES.get(t.elem_type)
    if dtype is None:
        raise SubtuneError(f"{path}: tensor {value.name!r} has ONNX element type {t.elem_type}, which Triton "
                           "configurations here do not map; expected float or integer tensors")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    if not dims:
        raise SubtuneError(f"{path}: tensor {value.name!r} has no shape; expected a batch dimension first")
    return Tensor(value.name, dtype, dims[1:])
