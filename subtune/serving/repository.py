"""A Triton model repository for a compiled graph (`subtune triton-repo`).

    REPO/NAME/config.pbtxt            the graph: input `images`, every output (`base`, then the
                                      tasks) with dims, max_batch_size, dynamic batching, instance
                                      groups, the subtune metadata under `parameters`; the version
                                      it serves (`version_policy: specific`) and the versions served
                                      so far (parameter `served_versions`, for `subtune rollout --rollback`)
    REPO/NAME/1/                      version 1: model.onnx (+ its .data weights file, when the
                                      graph has one) or model.plan; model.py for the python backend;
                                      labels_<task>.txt, one class name a line (Triton's
                                      classification extension), so each version has its own
    with --preprocess:
    REPO/NAME_preprocess/             python backend: encoded image bytes -> `images`
    REPO/NAME_ensemble/               ensemble: image bytes -> preprocess -> NAME -> outputs; its
                                      outputs and label files are those of the version served.
                                      For a --task-select graph a python model chaining the two
                                      (1/model.py): it asks NAME for the outputs the client named,
                                      which Triton's ensemble platform cannot

`subtune rollout` (serving/rollout.py) adds versions 2, 3, ... beside the first and switches the
configuration between them while the server runs.

Backends: `python` (ONNX Runtime inside Triton's python backend: what loads with the tritonserver
that installs from PyPI, CPU), `onnxruntime` (platform onnxruntime_onnx) and `tensorrt`
(platform tensorrt_plan), which need NVIDIA's Triton containers.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from subtune.errors import SubtuneError
from subtune.serving.graph import GraphInfo, read_graph
from subtune.serving.pbtxt import Enum, dumps

BACKENDS = ("python", "onnxruntime", "tensorrt")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
IMAGE_BYTES = "image_bytes"
FIRST_VERSION = 1
HISTORY_PARAMETER = "served_versions"  # JSON list of the versions served, in order, the current one last
GRAPH_FILE_PARAMETER = "graph_file"  # python backend: the graph's file name inside the version folder
# a --task-select graph's image ensemble (a python model): the two models it chains
ENSEMBLE_GRAPH_PARAMETER = "graph_model"
ENSEMBLE_PREPROCESS_PARAMETER = "preprocess_model"


@dataclass
class RepoOptions:
    name: str | None = None  # default: the graph file's stem
    backend: str | None = None  # default: python for .onnx, tensorrt for an engine
    max_batch_size: int = 8
    instances: int = 1
    device: str | None = None  # cpu | gpu; default: gpu for tensorrt, cpu otherwise
    dynamic_batching: bool = True
    queue_delay_us: int = 200
    preprocess: bool = False
    ort_threads: int = 0  # python backend: ONNX Runtime intra-op threads; 0: cores / instances

    def resolved(self, graph: GraphInfo) -> "RepoOptions":
        backend = self.backend or ("tensorrt" if graph.is_engine else "python")
        if backend not in BACKENDS:
            raise SubtuneError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if backend == "tensorrt" and not graph.is_engine:
            raise SubtuneError(f"--backend tensorrt serves a TensorRT engine, found {graph.path}; build one with "
                               "`subtune-compile ... -o engine.plan` (needs a GPU), or use --backend onnxruntime|python")
        if backend == "onnxruntime" and graph.is_engine:
            raise SubtuneError(f"--backend onnxruntime serves the ONNX graph, found the engine {graph.path}; "
                               f"pass {graph.onnx_path} instead, or use --backend tensorrt")
        name = self.name or re.sub(r"[^A-Za-z0-9_.-]", "_", graph.path.stem)
        if not _NAME.match(name):
            raise SubtuneError(f"model name {name!r}: expected letters, digits, '_', '.', '-' (pass --name)")
        if not 1 <= self.max_batch_size <= 1 << 16:
            raise SubtuneError(f"--max-batch-size {self.max_batch_size}: expected 1 to 65536")
        if not 1 <= self.instances <= 64:
            raise SubtuneError(f"--instances {self.instances}: expected 1 to 64")
        device = self.device or ("gpu" if backend == "tensorrt" else "cpu")
        if device not in ("cpu", "gpu"):
            raise SubtuneError(f"device {device!r}: expected cpu or gpu")
        if backend == "python" and device == "gpu":
            raise SubtuneError("the python backend's model runs ONNX Runtime on CPU: --device gpu is for "
                               "--backend onnxruntime or tensorrt (NVIDIA's Triton containers)")
        if backend == "tensorrt" and device == "cpu":
            raise SubtuneError("a TensorRT engine runs on a GPU only: drop --device cpu")
        if self.queue_delay_us < 0:
            raise SubtuneError(f"queue delay {self.queue_delay_us} us: expected 0 or more")
        return RepoOptions(name, backend, self.max_batch_size, self.instances, device, self.dynamic_batching,
                           self.queue_delay_us, self.preprocess, self.ort_threads)


@dataclass
class Repository:
    path: Path
    models: list[str]  # in the order clients would use them: the graph, then preprocess and ensemble
    graph_model: str
    ensemble: str | None
    backend: str
    outputs: list[str]
    labels: dict[str, str] = field(default_factory=dict)  # output -> label file (relative to the graph's model folder)
    version: int = FIRST_VERSION  # the version the configuration serves
    task_select: dict | None = None  # a --task-select graph's subtune.task_select (mask input, columns)

    def describe(self) -> dict:
        return {"repository": str(self.path), "models": self.models, "graph_model": self.graph_model,
                "ensemble": self.ensemble, "backend": self.backend, "outputs": self.outputs, "labels": self.labels,
                "version": self.version, "task_select": self.task_select}


def _preferred_sizes(max_batch: int) -> list[int]:
    sizes, b = [], 2
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch] if max_batch > 1 else []


def _param(key: str, value: str) -> dict:
    return {"key": key, "value": {"string_value": value}}


def graph_outputs(graph: GraphInfo, version: int) -> tuple[list[dict], dict[str, list[str]]]:
    """The graph's outputs as config entries, and its label files (file name inside the version
    folder -> class names). A task output with class names gets `label_filename`
    `<version>/labels_<task>.txt`: the labels live in the version folder, so versions with
    different classes for a task each keep their own."""
    outputs, labels = [], {}
    for t in graph.outputs:
        out = {"name": t.name, "data_type": Enum(f"TYPE_{t.dtype}"), "dims": t.dims}
        classes = graph.classes(t.name)
        if classes and len(t.dims) == 1 and t.dims[0] in (-1, len(classes)):
            labels[f"labels_{t.name}.txt"] = classes
            out["label_filename"] = f"{version}/labels_{t.name}.txt"
        outputs.append(out)
    return outputs, labels


def metadata_parameters(graph: GraphInfo) -> dict[str, str]:
    """The graph's subtune metadata as config parameters (strings; JSON for anything else)."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in sorted(graph.metadata.items())}


def graph_inputs(graph: GraphInfo, backend: str) -> list[dict]:
    """The graph's inputs as config entries: `images`, and for a --task-select graph its mask
    (`tasks`, BOOL [k]). The python backend's model builds the mask from the outputs a request
    names, so there the mask is `optional`: a client may send it to choose tasks per image. Triton's
    onnxruntime backend feeds the graph what clients send, so there every client must send it."""
    image, mask = graph.image_input, graph.mask_input
    inputs = [{"name": image.name, "data_type": Enum(f"TYPE_{image.dtype}"), "dims": image.dims}]
    if mask is not None:
        inputs.append({"name": mask.name, "data_type": Enum(f"TYPE_{mask.dtype}"), "dims": mask.dims,
                       **({"optional": True} if backend == "python" else {})})
    return inputs


def graph_config(graph: GraphInfo, opts: RepoOptions, version: int = FIRST_VERSION) -> tuple[dict, dict[str, list[str]]]:
    """config.pbtxt as a dict serving `version`, and that version's label files (file name inside
    the version folder -> class names)."""
    inputs = graph_inputs(graph, opts.backend)  # refuses inputs other than images (and a task-select mask)
    config: dict = {"name": opts.name}
    if opts.backend == "python":
        config["backend"] = "python"
    else:
        config["platform"] = "onnxruntime_onnx" if opts.backend == "onnxruntime" else "tensorrt_plan"
    config["max_batch_size"] = opts.max_batch_size
    config["version_policy"] = {"specific": {"versions": [version]}}
    config["input"] = inputs
    config["output"], labels = graph_outputs(graph, version)
    if opts.dynamic_batching and opts.max_batch_size > 1:
        config["dynamic_batching"] = {"preferred_batch_size": _preferred_sizes(opts.max_batch_size),
                                      "max_queue_delay_microseconds": opts.queue_delay_us}
    config["instance_group"] = [{"count": opts.instances, "kind": Enum(f"KIND_{opts.device.upper()}")}]
    params = [_param(k, v) for k, v in metadata_parameters(graph).items()]
    params.append(_param(HISTORY_PARAMETER, json.dumps([version])))
    if opts.backend == "python":
        params += [_param(GRAPH_FILE_PARAMETER, "model.onnx"), _param("ort_intra_op_threads", str(opts.ort_threads)),
                   _param("ort_allow_spinning", "0")]
    config["parameters"] = params
    if opts.backend == "onnxruntime":
        # ONNX Runtime's CPU threads (Triton's onnxruntime backend parameters)
        config["parameters"] += [_param("intra_op_thread_count", str(opts.ort_threads)),
                                 _param("inter_op_thread_count", "1")]
    return config, labels


def preprocess_config(graph: GraphInfo, opts: RepoOptions, pre: dict) -> dict:
    image = graph.image_input
    config = {"name": f"{opts.name}_preprocess", "backend": "python", "max_batch_size": opts.max_batch_size,
              "input": [{"name": IMAGE_BYTES, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
              "output": [{"name": image.name, "data_type": Enum("TYPE_FP32"), "dims": [3, *pre["image_size"]]}],
              "instance_group": [{"count": opts.instances, "kind": Enum("KIND_CPU")}],
              "parameters": [_param("preprocess", json.dumps(pre, sort_keys=True))]}
    if opts.dynamic_batching and opts.max_batch_size > 1:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": opts.queue_delay_us}
    return config


def ensemble_outputs(graph_model: str, graph_outputs: list[dict]) -> list[dict]:
    """The ensemble's outputs: the graph's, with their label files read from the graph model's
    version folder (`../<graph model>/<version>/labels_<task>.txt`)."""
    return [{**o, "label_filename": f"../{graph_model}/{o['label_filename']}"} if "label_filename" in o else dict(o)
            for o in graph_outputs]


def ensemble_config(graph: GraphInfo, opts: RepoOptions, graph_cfg: dict) -> dict:
    image = graph.image_input.name
    pre_name = f"{opts.name}_preprocess"
    outputs = ensemble_outputs(opts.name, graph_cfg["output"])
    if graph.task_select is not None:
        return task_select_ensemble_config(opts, image, outputs)
    return {
        "name": f"{opts.name}_ensemble", "platform": "ensemble", "max_batch_size": opts.max_batch_size,
        "input": [{"name": IMAGE_BYTES, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "output": outputs,
        "ensemble_scheduling": {"step": [
            {"model_name": pre_name, "model_version": -1,
             "input_map": [{"key": IMAGE_BYTES, "value": IMAGE_BYTES}],
             "output_map": [{"key": image, "value": "preprocessed_images"}]},
            {"model_name": opts.name, "model_version": -1,
             "input_map": [{"key": image, "value": "preprocessed_images"}],
             "output_map": [{"key": o["name"], "value": o["name"]} for o in outputs]},
        ]},
    }


def task_select_ensemble_config(opts: RepoOptions, image: str, outputs: list[dict]) -> dict:
    """A --task-select graph's image ensemble: a python model (models/task_select_ensemble.py) that
    chains NAME_preprocess and NAME itself, asking the graph for the outputs the client named.
    (Triton's ensemble platform asks every step for all the outputs it maps, so behind one the
    graph would compute every task for every image.)"""
    config = {"name": f"{opts.name}_ensemble", "backend": "python", "max_batch_size": opts.max_batch_size,
              "input": [{"name": IMAGE_BYTES, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
              "output": outputs,
              "instance_group": [{"count": opts.instances, "kind": Enum("KIND_CPU")}],
              "parameters": [_param(ENSEMBLE_GRAPH_PARAMETER, opts.name),
                             _param(ENSEMBLE_PREPROCESS_PARAMETER, f"{opts.name}_preprocess"),
                             _param("images_input", image)]}
    if opts.dynamic_batching and opts.max_batch_size > 1:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": opts.queue_delay_us}
    return config


def write_repository(graph_path: str | Path, out: str | Path, opts: RepoOptions | None = None, *,
                     overwrite: bool = False) -> Repository:
    """Write the repository to a temporary folder beside `out`, then rename it into place: a
    failure leaves nothing behind. An existing `out` is an error unless `overwrite`."""
    graph = read_graph(graph_path)
    opts = (opts or RepoOptions()).resolved(graph)
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise SubtuneError(f"cannot write {out}: folder {parent} does not exist; create it or choose another -o")
    if out.exists() and not out.is_dir():
        raise SubtuneError(f"{out} is a file: expected a folder for the repository; choose another -o")
    if out.exists() and not overwrite:
        raise SubtuneError(f"{out} exists; choose another -o or pass --force to replace it")
    pre = graph.preprocess() if opts.preprocess else None
    if opts.preprocess and graph.image_input.dims[1:] not in ([-1, -1], list(pre["image_size"])):
        raise SubtuneError(f"{graph.onnx_path}: input dims {graph.image_input.dims} do not match the recorded "
                           f"preprocessing size {pre['image_size']}; compile the graph again")
    cfg, labels = graph_config(graph, opts)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as e:
        raise SubtuneError(f"cannot write {out}: {e.strerror}; choose another -o") from e
    try:
        models = [opts.name]
        _write_model(tmp / opts.name, cfg)
        write_version_files(graph, tmp / opts.name / str(FIRST_VERSION), opts.backend, labels)
        ensemble = None
        if pre is not None:
            from subtune.serving.models import PREPROCESS_MODEL

            pcfg = preprocess_config(graph, opts, pre)
            _write_model(tmp / pcfg["name"], pcfg)
            shutil.copyfile(PREPROCESS_MODEL, tmp / pcfg["name"] / "1" / "model.py")
            ecfg = ensemble_config(graph, opts, cfg)
            _write_model(tmp / ecfg["name"], ecfg)
            if ecfg.get("backend") == "python":
                from subtune.serving.models import TASK_SELECT_ENSEMBLE

                shutil.copyfile(TASK_SELECT_ENSEMBLE, tmp / ecfg["name"] / "1" / "model.py")
            ensemble = ecfg["name"]
            models += [pcfg["name"], ensemble]
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Repository(out, models, opts.name, ensemble, opts.backend, [o.name for o in graph.outputs],
                      {o["name"]: o["label_filename"] for o in cfg["output"] if "label_filename" in o}, FIRST_VERSION,
                      graph.task_select)


def _write_model(folder: Path, config: dict) -> None:
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(dumps(config))


def write_version_files(graph: GraphInfo, folder: Path, backend: str, labels: dict[str, list[str]],
                        graph_file: str = "model.onnx") -> list[str]:
    """A version folder's files: the graph (model.plan for TensorRT; else the ONNX graph with its
    external weights file beside it, under the name the graph records), the python backend's
    model.py, the label files. Returns the names written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if backend == "tensorrt":
        shutil.copyfile(graph.path, folder / "model.plan")
        written.append("model.plan")
    else:
        shutil.copyfile(graph.onnx_path, folder / graph_file)
        written.append(graph_file)
        for name in graph.external_data:  # weights over 2 GiB: the .data file, under the name the graph records
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(graph.onnx_path.parent / name, folder / name)
            written.append(name)
    if backend == "python":
        from subtune.serving.models import GRAPH_MODEL, GRAPH_MODEL_SUPPORT

        shutil.copyfile(GRAPH_MODEL, folder / "model.py")
        written.append("model.py")
        for support in GRAPH_MODEL_SUPPORT:  # the metadata reader model.py checks the graph with
            shutil.copyfile(support, folder / support.name)
            written.append(support.name)
    write_labels(folder, labels)
    return written + sorted(labels)


def write_labels(folder: Path, labels: dict[str, list[str]]) -> None:
    """One class name a line (a name's own line breaks become spaces)."""
    for filename, classes in labels.items():
        (folder / filename).write_text("".join(" ".join(str(c).splitlines()) + "\n" for c in classes))
