"""A graph model's versions inside a Triton repository, as `subtune rollout` reads and edits them.

    open_graph_model(repo, name)   the graph model (a model whose configuration carries the subtune
                                   metadata), the version its configuration serves
                                   (`version_policy: specific`), the versions served before it
                                   (parameter `served_versions`), the versions on disk, and the
                                   ensemble and preprocessing models that pair with it
    GraphModel.config_serving()    the graph model's configuration for another version: that
                                   version's outputs, label files, metadata and task mask input
                                   (a --task-select graph's `tasks` comes and goes), everything else
                                   (batching, instances, threads, hand edits) kept
    GraphModel.ensemble_config()   the ensemble's configuration with a given set of outputs
    Edit                           the repository edits of one rollout: a version folder built
                                   under a hidden name and renamed into place, configurations
                                   replaced whole (temporary file, rename); `restore()` puts back
                                   every byte it changed

Configurations are read and written with Triton's own ModelConfig protobuf (tritonclient), so
whatever a user changed by hand in config.pbtxt survives a rollout. A repository written before
versions existed here (no version policy, labels beside config.pbtxt) reads as serving its
highest version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from subtune.errors import SubtuneError
from subtune.runtimes.tensorrt import file_sha256
from subtune.serving.graph import GraphInfo, read_graph
from subtune.serving.repository import (ENSEMBLE_GRAPH_PARAMETER, ENSEMBLE_PREPROCESS_PARAMETER, GRAPH_FILE_PARAMETER,
                                        HISTORY_PARAMETER, ensemble_outputs, graph_inputs, graph_outputs,
                                        metadata_parameters, write_version_files)

log = logging.getLogger(__name__)
CONFIG = "config.pbtxt"
STAGING_PREFIX = ".rollout-"  # Triton ignores version folders whose names are not numbers
CLIENTS_HINT = "install the Triton clients: pip install 'subtune[serve]' (tritonclient[grpc,http])"


def _protobuf():
    try:
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise SubtuneError(f"reading Triton configurations needs Triton's ModelConfig protobuf ({e}); "
                           f"{CLIENTS_HINT}") from None
    return model_config_pb2, text_format, json_format


@dataclass
class ModelEntry:
    """One model folder of the repository and its parsed configuration."""

    name: str
    folder: Path
    config: object  # model_config_pb2.ModelConfig
    text: bytes  # config.pbtxt as it is on disk

    @property
    def config_path(self) -> Path:
        return self.folder / CONFIG

    def output_names(self) -> list[str]:
        return [o.name for o in self.config.output]


def _parse(folder: Path) -> ModelEntry | None:
    pb, text_format, _ = _protobuf()
    path = folder / CONFIG
    try:
        raw = path.read_bytes()
        config = text_format.Parse(raw.decode("utf-8"), pb.ModelConfig())
    except (OSError, UnicodeDecodeError, text_format.ParseError) as e:
        log.debug("skipping %s: %s", path, e)
        return None
    return ModelEntry(config.name or folder.name, folder, config, raw)


def to_text(config) -> str:
    _, text_format, _ = _protobuf()
    return text_format.MessageToString(config)


def version_folders(folder: Path) -> list[int]:
    """The numbered version folders (digits only: Triton reads '7x' as 7, a rollout never writes one)."""
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


@dataclass
class GraphModel:
    repository: Path
    model: ModelEntry
    ensemble: ModelEntry | None  # subtune's NAME_ensemble, which maps every graph output
    preprocess: ModelEntry | None
    other_ensembles: list[ModelEntry]  # hand-made ensembles that call the graph model
    served: int
    history: list[int]

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def backend(self) -> str:
        c = self.model.config
        if c.backend == "python":
            return "python"
        return {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}.get(c.platform, c.platform or c.backend)

    @property
    def max_batch_size(self) -> int:
        return int(self.model.config.max_batch_size) or 1

    def versions_on_disk(self) -> list[int]:
        return version_folders(self.model.folder)

    def next_version(self) -> int:
        return max([0, *self.versions_on_disk(), *self.history]) + 1

    def graph_file(self) -> str:
        params = self.model.config.parameters
        if self.backend == "python" and GRAPH_FILE_PARAMETER in params:
            return params[GRAPH_FILE_PARAMETER].string_value or "model.onnx"
        if self.backend == "tensorrt":
            return self.model.config.default_model_filename or "model.plan"
        return self.model.config.default_model_filename or "model.onnx"

    def graph_path(self, version: int) -> Path:
        return self.model.folder / str(version) / self.graph_file()

    def graph(self, version: int) -> GraphInfo:
        path = self.graph_path(version)
        if not path.is_file():
            raise SubtuneError(f"{self.model.folder}: version {version} has no {self.graph_file()} "
                               f"(expected {path}); the repository was changed by hand")
        return read_graph(path)

    # ---------------------------------------------------------------- configurations
    def config_serving(self, version: int, graph: GraphInfo, history: list[int]):
        """The graph model's configuration serving `version` (whose graph is `graph`), with
        `history` as the versions served: outputs, label files, subtune metadata and a task-select
        graph's mask input from the graph; the rest of the served configuration (the images input
        included) kept. Returns (config, label files)."""
        pb, _, json_format = _protobuf()
        config = pb.ModelConfig()
        config.CopyFrom(self.model.config)
        config.version_policy.Clear()
        config.version_policy.specific.versions.append(version)
        served_inputs = {i.name: i for i in config.input}
        del config.input[:]
        for entry in graph_inputs(graph, self.backend):  # a task-select mask comes, goes or changes width
            if entry["name"] == graph.image_input.name and entry["name"] in served_inputs:  # as served, hand edits included
                config.input.add().CopyFrom(served_inputs[entry["name"]])
            else:
                config.input.add().CopyFrom(json_format.ParseDict(_json_ready(entry), pb.ModelInput()))
        outputs, labels = graph_outputs(graph, version)
        del config.output[:]
        for o in outputs:
            config.output.add().CopyFrom(json_format.ParseDict(_json_ready(o), pb.ModelOutput()))
        for key in [k for k in config.parameters if k.startswith("subtune.")]:
            del config.parameters[key]
        for key, value in metadata_parameters(graph).items():
            config.parameters[key].string_value = value
        config.parameters[HISTORY_PARAMETER].string_value = json.dumps(history)
        return config, labels

    def ensemble_config(self, graph_config, keep: list[str]):
        """The ensemble's configuration answering with the graph outputs named in `keep` (in the
        graph's order), their label files read from the graph model's version folder."""
        pb, _, json_format = _protobuf()
        config = pb.ModelConfig()
        config.CopyFrom(self.ensemble.config)
        entries = [json_format.MessageToDict(o, preserving_proto_field_name=True) for o in graph_config.output
                   if o.name in keep]
        del config.output[:]
        for o in ensemble_outputs(self.name, entries):
            config.output.add().CopyFrom(json_format.ParseDict(o, pb.ModelOutput()))
        for step in config.ensemble_scheduling.step:
            if step.model_name == self.name:
                step.output_map.clear()
                for name in keep:
                    step.output_map[name] = name
        return config


def _json_ready(entry: dict) -> dict:
    return {k: (str(v) if k == "data_type" else v) for k, v in entry.items()}


def open_graph_model(repository: str | os.PathLike, name: str | None = None) -> GraphModel:
    repo = Path(repository)
    if not repo.is_dir():
        raise SubtuneError(f"{repo}: not a folder; expected a Triton model repository (subtune triton-repo MODEL.onnx -o REPO)")
    entries = [e for e in (_parse(p) for p in sorted(repo.iterdir()) if p.is_dir() and (p / CONFIG).is_file()) if e]
    graphs = [e for e in entries if "subtune.outputs" in e.config.parameters and e.config.platform != "ensemble"]
    if name is None:
        if not graphs:
            raise SubtuneError(f"{repo}: no subtune graph model in it (no config.pbtxt with subtune metadata); "
                               "write one with subtune triton-repo MODEL.onnx -o REPO")
        if len(graphs) > 1:
            raise SubtuneError(f"{repo} holds {len(graphs)} graph models ({', '.join(e.name for e in graphs)}); "
                               "choose one with --name")
        model = graphs[0]
    else:
        model = next((e for e in graphs if e.name == name or e.folder.name == name), None)
        if model is None:
            known = ", ".join(e.name for e in graphs) or "none"
            raise SubtuneError(f"{repo}: no graph model {name!r} (graph models there: {known})")
    if model.folder.name != model.name:
        raise SubtuneError(f"{model.folder}: its configuration names the model {model.name!r}, not its folder's name; "
                           "Triton refuses that: fix config.pbtxt")
    served, history = _served(model)
    ensembles = [e for e in entries if e.config.platform == "ensemble"
                 and any(s.model_name == model.name for s in e.config.ensemble_scheduling.step)]
    ours = next((e for e in ensembles if e.name == f"{model.name}_ensemble"), None)
    preprocess = None
    if ours is not None:
        pre_names = [s.model_name for s in ours.config.ensemble_scheduling.step if s.model_name != model.name]
        preprocess = next((e for e in entries if e.name in pre_names), None)
    else:  # a --task-select graph's image ensemble: a python model that names the two models it chains
        ours = next((e for e in entries if e.name == f"{model.name}_ensemble" and e.config.backend == "python"
                     and _parameter(e, ENSEMBLE_GRAPH_PARAMETER) == model.name), None)
        if ours is not None:
            preprocess = next((e for e in entries if e.name == _parameter(ours, ENSEMBLE_PREPROCESS_PARAMETER)), None)
    return GraphModel(repo, model, ours, preprocess, [e for e in ensembles if e is not ours], served, history)


def _parameter(entry: ModelEntry, key: str) -> str | None:
    params = entry.config.parameters
    return params[key].string_value if key in params else None


def _served(model: ModelEntry) -> tuple[int, list[int]]:
    """The version the configuration serves and the versions served so far, the current last."""
    policy = model.config.version_policy
    on_disk = version_folders(model.folder)
    kind = policy.WhichOneof("policy_choice")
    where = model.config_path
    if kind == "specific":
        versions = list(policy.specific.versions)
        if len(versions) != 1:
            raise SubtuneError(f"{where} serves versions {versions}; a rollout switches one served version to "
                               "another: set version_policy to one version first")
        served = int(versions[0])
    elif kind is None or (kind == "latest" and policy.latest.num_versions in (0, 1)):
        if not on_disk:
            raise SubtuneError(f"{model.folder}: no version folder (1/, 2/, ...); write the repository again")
        served = on_disk[-1]  # Triton's default policy: the latest version
    else:
        raise SubtuneError(f"{where} serves {kind} versions; a rollout switches one served version to another: "
                           "set version_policy to one version first")
    history = [served]
    raw = model.config.parameters[HISTORY_PARAMETER].string_value if HISTORY_PARAMETER in model.config.parameters else ""
    if raw:
        try:
            recorded = json.loads(raw)
        except ValueError:
            recorded = None
        if (not isinstance(recorded, list) or not recorded
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in recorded)):
            raise SubtuneError(f"{where}: parameter {HISTORY_PARAMETER} is {raw!r}, expected a JSON list of versions; "
                               "fix config.pbtxt")
        if recorded[-1] != served:
            raise SubtuneError(f"{where}: parameter {HISTORY_PARAMETER} ends with version {recorded[-1]} but the "
                               f"version policy serves {served}; fix config.pbtxt")
        history = recorded
    return served, history


def graph_files(graph: GraphInfo) -> list[Path]:
    """The files a graph is: the ONNX (or engine) and its external weights files."""
    files = [graph.path] if graph.is_engine else [graph.onnx_path]
    return files + [graph.onnx_path.parent / n for n in graph.external_data]


def graph_digest(graph: GraphInfo) -> str:
    """sha256 over the graph's bytes (the ONNX or engine, then each external weights file under
    the name the graph records), to tell versions apart whatever the files are called."""
    h = hashlib.sha256()
    main, *weights = graph_files(graph)
    h.update(file_sha256(main).encode())
    for name, path in zip(graph.external_data if not graph.is_engine else [], weights):
        h.update(b"\0" + name.encode() + b"\0" + file_sha256(path).encode())
    return h.hexdigest()


@dataclass
class Edit:
    """The repository edits of one rollout, undoable: `restore()` puts every changed config back
    byte for byte and removes the version folder this edit created."""

    model: GraphModel
    originals: dict[Path, bytes] = field(default_factory=dict)
    created: Path | None = None

    def stage_version(self, version: int, graph: GraphInfo, labels: dict[str, list[str]]) -> list[str]:
        """Write version `version` of the graph model: built under a hidden name in the model's
        folder, its copied files checked against the originals, then renamed to `version`."""
        folder = self.model.model.folder
        target = folder / str(version)
        if target.exists():
            raise SubtuneError(f"{target} exists already; remove it or roll out again (the next free version is "
                               f"{self.model.next_version()})")
        try:
            tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
        except OSError as e:
            raise SubtuneError(f"cannot write in {folder}: {e.strerror}") from e
        try:
            written = write_version_files(graph, tmp, self.model.backend, labels, self.model.graph_file())
            main = graph.path if graph.is_engine else graph.onnx_path
            pairs = [(main, tmp / self.model.graph_file())]
            pairs += [(graph.onnx_path.parent / n, tmp / n) for n in ([] if graph.is_engine else graph.external_data)]
            for src, dst in pairs:
                if file_sha256(dst) != file_sha256(src):
                    raise SubtuneError(f"copying {src} into {folder} changed its bytes (disk full or failing?); "
                                       "nothing was rolled out")
            os.rename(tmp, target)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SubtuneError(f"cannot write version {version} into {folder}: {e.strerror or e}") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.created = target
        return written

    def write_config(self, entry: ModelEntry, config) -> None:
        """Replace `entry`'s config.pbtxt whole (temporary file in the same folder, rename)."""
        path = entry.config_path
        self.originals.setdefault(path, entry.text)
        fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".tmp", dir=entry.folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(to_text(config))
            os.chmod(tmp, _mode(path))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def restore(self) -> None:
        for path, raw in self.originals.items():
            fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.chmod(tmp, _mode(path))
            os.replace(tmp, path)
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            self.created = None


def _mode(path: Path) -> int:
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o644
