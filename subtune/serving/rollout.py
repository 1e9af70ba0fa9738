"""Change the tasks a running Triton server answers with, without dropping a request
(`subtune rollout`).

    rollout(repo, new_graph)   check the new graph against the version being served
                               (serving/compare.py) -> write it as the next version -> the
                               server loads it and answers with it -> the old version retires
    rollout(repo, rollback=True)  the same for the version served before the current one

The steps, each bounded in time:

1. Read the graph model of the repository (serving/versions.py) and the version its
   configuration serves; refuse an engine, another base, other inputs, other preprocessing
   (when an ensemble decodes images for the graph), and any output that changed unasked
   (compare.py). `dry_run` stops here: nothing is written and no server is contacted.
2. The server: it must answer at `url`, serve exactly the version the repository says, and take
   load requests (explicit model control, `subtune serve`'s default). Still nothing is written.
3. Write the version folder under a hidden name and rename it into place (the server ignores it:
   its version policy names one version). Then switch, so that no request can meet a mismatch:
   a. the ensemble first drops outputs the new graph lacks (it then asks only for outputs both
      versions have), loaded by the server;
   b. the graph model's configuration is replaced whole, now naming the new version, and the
      server loads it: Triton loads the new version beside the old one, moves requests to it
      once it is ready, and lets requests in flight on the old one finish (if the load fails,
      the old version stays, untouched);
   c. the ensemble gains the new graph's outputs.
4. The new version must answer the check images through the server exactly as the graph did
   here (within the compile tolerance), and be the only version ready.

Any failure in 3-4 switches the server back the same way (the old version never stopped
serving when the load itself failed), puts every byte of the repository back, and raises one
line saying what the server found. A refusal in 1-2 changes nothing at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from subtune.errors import SubtuneError
from subtune.serving.compare import Comparison, check_images, check_same_base_and_inputs, compare
from subtune.serving.control import DEFAULT_URL, LoadFailed, LoadTimedOut, ServerControl, parse_history
from subtune.serving.graph import GraphInfo, read_graph
from subtune.serving.repository import HISTORY_PARAMETER
from subtune.serving.versions import Edit, GraphModel, graph_digest, open_graph_model

log = logging.getLogger(__name__)
RETIRE_WAIT_S = 30.0  # the old version finishes the requests it holds, then unloads
RECOVERY_LOAD_S = 600.0  # putting the old version back may first wait for a load that ran past --timeout


@dataclass
class RolloutOptions:
    url: str = DEFAULT_URL
    name: str | None = None  # the graph model; needed when the repository holds several
    data: str | None = None  # check images from this dataset spec (default: random pixel images)
    check_images: int = 16
    replace: tuple[str, ...] = ()  # tasks retrained on purpose: they may differ from the served ones
    dry_run: bool = False
    timeout_s: float = 300.0  # the longest the server may take to load the new version


@dataclass
class RolloutResult:
    repository: Path
    model: str
    action: str  # rollout | rollback | none (the graph already serves)
    served_before: int
    serving: int  # the version the configuration (and, unless dry_run, the server) serves now
    comparison: Comparison | None
    dry_run: bool = False
    new_graph: str | None = None
    url: str | None = None
    written: list[str] = field(default_factory=list)  # files of the new version folder
    ensemble: str | None = None
    ensemble_outputs: list[str] = field(default_factory=list)
    load_seconds: float | None = None  # the server's load of the new version
    seconds: float | None = None  # the whole rollout, from reading the repository to the check of the answers
    server_max_difference: float | None = None  # the server's answers vs the graph's on the check images
    retired: bool | None = None  # the old version is no longer ready on the server
    history: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "comparison"}
        out["repository"] = str(self.repository)
        out["comparison"] = self.comparison.to_json() if self.comparison else None
        return out


def rollout(repository: str | os.PathLike, new_graph: str | os.PathLike | None = None, *, rollback: bool = False,
            options: RolloutOptions | None = None, on_progress: Callable[[str], None] | None = None) -> RolloutResult:
    o = options or RolloutOptions()
    if (new_graph is None) == (not rollback):
        raise SubtuneError("give the new graph (NEW.onnx) or --rollback, one of the two")
    if not Path(repository).is_dir():
        raise SubtuneError(f"{repository}: not a folder; expected a Triton model repository "
                           "(subtune triton-repo MODEL.onnx -o REPO)")
    # one rollout at a time per repository, from reading it to the end (a dry run changes nothing)
    with contextlib.nullcontext() if o.dry_run else _locked(Path(repository)):
        return _rollout(Path(repository), new_graph, rollback, o, on_progress or (lambda line: None))


def _rollout(repository: Path, new_graph, rollback: bool, o: RolloutOptions, say) -> RolloutResult:
    began = time.monotonic()
    model = open_graph_model(repository, o.name)
    if model.backend == "tensorrt":
        raise SubtuneError(f"{model.model.folder} serves a TensorRT engine; a rollout checks graphs with ONNX Runtime "
                           "and rolls out ONNX graphs (python or onnxruntime backend) only")
    served_graph = model.graph(model.served)
    if rollback:
        if len(model.history) < 2:
            raise SubtuneError(f"{model.name}: version {model.served} is the only version served so far "
                               f"({HISTORY_PARAMETER} {model.history}): nothing to roll back to")
        target, history = model.history[-2], model.history[:-1]
        if not model.graph_path(target).is_file():
            raise SubtuneError(f"{model.name}: version {target}, served before {model.served}, is gone from "
                               f"{model.model.folder} (no {model.graph_file()}); nothing to roll back to")
        graph, label = model.graph(target), f"version {target}, served before {model.served}"
    else:
        graph = read_graph(new_graph)
        if graph.is_engine:
            raise SubtuneError(f"{new_graph}: a TensorRT engine; roll out the compiled ONNX graph")
        label = str(new_graph)
        if graph_digest(graph) == graph_digest(served_graph):
            say(f"{model.name}: version {model.served} already serves {new_graph} (the same bytes); nothing to do")
            return RolloutResult(model.repository, model.name, "none", model.served, model.served, None,
                                 o.dry_run, str(new_graph), history=list(model.history))
        target, history = model.next_version(), [*model.history, model.next_version()]
    mask_from_outputs = model.backend == "python"  # its model builds a task-select graph's mask itself
    check_same_base_and_inputs(served_graph, graph, f"the served version {model.served}", label,
                               mask_from_outputs=mask_from_outputs)
    _check_pairs(model, graph, label)
    images = check_images(graph, o.check_images, o.data)
    comparison = compare(served_graph, graph, images, served_version=model.served, new_label=label,
                         replace=tuple(o.replace), rollback=rollback, mask_from_outputs=mask_from_outputs)
    action = "rollback" if rollback else "rollout"
    say(f"{model.name}: version {model.served} (serving) -> version {target} ({label})")
    for line in comparison.lines():
        say(line)
    if graph.task_select and model.ensemble is not None and model.ensemble.config.platform == "ensemble":
        say(f"{model.ensemble.name} is Triton's ensemble, which asks {model.name} for every output: its image clients "
            "get every task computed (the same answers); `subtune triton-repo NEW.onnx --preprocess` writes the "
            "ensemble that asks only for the outputs a client names")
    result = RolloutResult(model.repository, model.name, action, model.served, model.served, comparison, o.dry_run,
                           None if rollback else str(new_graph), ensemble=model.ensemble.name if model.ensemble else None,
                           history=list(model.history))
    if o.dry_run:
        say("dry run: nothing written, no server contacted")
        result.seconds = time.monotonic() - began
        return result
    with ServerControl(o.url, o.timeout_s) as server:
        result.url = server.url
        _check_server(model, server)
        config, labels = model.config_serving(target, graph, history)
        edit = Edit(model)
        switch = _Switch(model, server, edit, say)
        try:
            if not rollback:
                result.written = edit.stage_version(target, graph, labels)
                say(f"wrote {model.model.folder / str(target)} ({', '.join(result.written)})")
            result.load_seconds = switch.to(config, [t.name for t in graph.outputs])
            if not server.wait_versions(model.name, [target], 10.0) and target not in server.ready_versions(model.name):
                raise SubtuneError(f"the server reports version {target} of {model.name} not ready after loading it")
            result.server_max_difference = _check_answers(server, model, target, images.images, comparison)
        except BaseException as e:
            problem = _undo(switch, edit, model, say)
            if isinstance(e, SubtuneError):
                after = (f"version {model.served} of {model.name} serves as before and the repository is as it was"
                         if problem is None else f"putting version {model.served} back failed too: {problem}")
                raise SubtuneError(f"{e}; {after}") from None
            raise
        result.serving, result.history = target, history
        result.ensemble_outputs = list(switch.ensemble_outputs or [])
        say(f"server {server.url}: {model.name} version {target} loaded in {result.load_seconds:.2f} s; its answers on "
            f"the check images equal the graph's (max difference {result.server_max_difference:.1e})")
        result.retired = server.wait_versions(model.name, [target], RETIRE_WAIT_S)
        keep = "its files stay" + (", for --rollback" if not rollback else "")
        say(f"version {model.served} retired ({keep})" if result.retired else
            f"version {model.served} still finishing requests after {RETIRE_WAIT_S:.0f} s; the server unloads it when done")
        if model.ensemble is not None:
            say(f"{model.ensemble.name}: outputs {', '.join(result.ensemble_outputs)}")
    result.seconds = time.monotonic() - began
    say(f"{model.name} serves version {target} (served so far: {', '.join(map(str, history))})")
    return result


def _check_pairs(model: GraphModel, graph: GraphInfo, label: str) -> None:
    """What pairs with the graph model must still fit the new graph: the preprocessing an ensemble
    applies, and every output a hand-made ensemble takes from the graph."""
    if model.preprocess is not None:
        params = model.preprocess.config.parameters
        served = json.loads(params["preprocess"].string_value) if "preprocess" in params else None
        try:
            new = graph.preprocess()
        except SubtuneError as e:
            raise SubtuneError(f"{model.ensemble.name} decodes images for {model.name}, but {e}") from None
        if served is not None and new != served:
            raise SubtuneError(f"{label} was trained with preprocessing {new}, {model.preprocess.name} applies "
                               f"{served}: one ensemble applies one preprocessing; write a repository of its own "
                               "for the new graph")
    outputs = {t.name: (t.dtype, t.dims) for t in graph.outputs}
    for ens in model.other_ensembles:
        for step in ens.config.ensemble_scheduling.step:
            if step.model_name != model.name:
                continue
            lacking = [k for k in step.output_map if k not in outputs]
            if lacking:
                raise SubtuneError(f"ensemble {ens.name} takes output(s) {', '.join(lacking)} from {model.name}, which "
                                   f"{label} lacks; change {ens.name} first")


def _check_server(model: GraphModel, server: ServerControl) -> None:
    """The server serves exactly what the repository says, and takes load requests."""
    server.check_live()
    ready = server.ready_versions(model.name)
    if not ready:
        names = sorted({m.get("name", "?") for m in server.index()})
        raise SubtuneError(f"the server at {server.url} does not serve {model.name} (its models: "
                           f"{', '.join(names) or 'none'}): is it serving another repository?")
    if ready != [model.served]:
        raise SubtuneError(f"the server at {server.url} has {model.name} version(s) {ready} ready, the repository's "
                           f"configuration serves version {model.served}: is it serving another repository, or is "
                           "another rollout under way?")
    loaded = parse_history(server.config(model.name), HISTORY_PARAMETER)
    if loaded is not None and loaded != model.history:
        raise SubtuneError(f"the server at {server.url} loaded {model.name} with {HISTORY_PARAMETER} {loaded}, the "
                           f"repository says {model.history}: is it serving a copy of this repository?")
    server.load(model.name, timeout_s=server.request_timeout_s)  # nothing changed on disk: a no-op, which
    # tells whether the server takes load requests


class _Switch:
    """Moves the server from one graph configuration (and ensemble) to another in the order that
    keeps every request answerable, remembering what the server has loaded."""

    def __init__(self, model: GraphModel, server: ServerControl, edit: Edit, say):
        self.model, self.server, self.edit, self.say = model, server, edit, say
        self.graph_config = self.original_config = model.model.config  # what the server has loaded
        self.ensemble = self.original_ensemble = model.ensemble.config if model.ensemble else None

    @property
    def ensemble_outputs(self) -> list[str] | None:
        return [o.name for o in self.ensemble.output] if self.ensemble is not None else None

    def _load_ensemble(self, config, timeout_s: float | None = None) -> None:
        ens = self.model.ensemble
        self.edit.write_config(ens, config)
        try:
            self.server.load(ens.name, timeout_s)
        except LoadFailed as e:
            raise SubtuneError(f"the server could not load {ens.name} with outputs "
                               f"{', '.join(o.name for o in config.output)}: {e}") from None
        self.ensemble = config

    def to(self, config, outputs: list[str], ensemble=None, timeout_s: float | None = None) -> float:
        """Serve `config` (the graph model) and the ensemble answering with `outputs` (or the
        ensemble configuration `ensemble`). Returns the seconds the server took to load the graph
        model."""
        if self.ensemble is not None:
            # a. first, ask the graph only for outputs both versions have
            common = [name for name in self.ensemble_outputs if name in outputs]
            if common != self.ensemble_outputs:
                self._load_ensemble(self.model.ensemble_config(self.graph_config or self.original_config, common),
                                    timeout_s)
        # b. the graph model: Triton loads the new version beside the old and swaps when it is ready
        self.edit.write_config(self.model.model, config)
        try:
            seconds = self.server.load(self.model.name, timeout_s)
        except LoadFailed as e:
            raise SubtuneError(f"the server could not load {self.model.name} version "
                               f"{list(config.version_policy.specific.versions)[0]}: {e}") from None
        except LoadTimedOut:
            self.graph_config = None  # unknown: the server may still finish the load
            raise
        self.graph_config = config
        # c. the ensemble answers with every output of the new version, its labels from there
        if self.ensemble is not None:
            final = ensemble if ensemble is not None else self.model.ensemble_config(config, outputs)
            if final != self.ensemble:
                self._load_ensemble(final, timeout_s)
        return seconds

    def back(self, timeout_s: float) -> None:
        """Serve the original configuration again (the server's state may be anywhere between;
        after a load that ran past --timeout it is unknown, and the load of the original waits for
        that one to end)."""
        if self.graph_config is not self.original_config:
            self.to(self.original_config, [o.name for o in self.original_ensemble.output]
                    if self.original_ensemble is not None else [], self.original_ensemble, timeout_s)
        elif self.ensemble is not self.original_ensemble and self.ensemble != self.original_ensemble:
            self._load_ensemble(self.original_ensemble, timeout_s)


def _undo(switch: _Switch, edit: Edit, model: GraphModel, say) -> str | None:
    """Switch the server back (waiting, if need be, for a load that ran past --timeout to end
    first), then put the repository's bytes back. Returns what went wrong, None when both worked;
    never raises: the caller raises the reason the rollout failed."""
    problems = []
    try:
        switch.back(RECOVERY_LOAD_S)
    except BaseException as e:  # noqa: BLE001
        problems.append(f"the server: {e}")
    try:
        edit.restore()
    except OSError as e:
        problems.append(f"the repository: {e}")
    for p in problems:
        log.error("undoing the rollout of %s: %s", model.name, p)
        say(f"undoing the rollout: {p}")
    return "; ".join(problems) or None


def _check_answers(server: ServerControl, model: GraphModel, version: int, images: np.ndarray,
                   comparison: Comparison) -> float:
    """The served version's answers on the check images against the graph's own (ONNX Runtime
    here): every output, within the compile tolerance."""
    got = server.infer(model.name, version, images, model.max_batch_size)
    worst = 0.0
    for name, want in comparison.new_outputs.items():
        if name not in got:
            raise SubtuneError(f"the server's {model.name} version {version} does not answer with output {name}")
        a = got[name]
        if a.shape != want.shape:
            raise SubtuneError(f"the server's {model.name} version {version} answers {name} with shape {a.shape}, "
                               f"the graph with {want.shape}")
        scale = float(np.abs(want).max()) or 1.0
        worst = max(worst, float(np.abs(a.astype(np.float64) - want).max()) / scale)
    if worst > comparison.tolerance:
        raise SubtuneError(f"the server's {model.name} version {version} answers the check images differently from "
                           f"the graph run here (max difference {worst:.1e} > {comparison.tolerance:.0e}): its ONNX "
                           "Runtime differs from this one? (scripts/install_serve_env.sh pins the same version)")
    return worst


@contextlib.contextmanager
def _locked(repository: Path):
    """One rollout at a time per repository (an advisory lock on the folder itself: no file)."""
    fd = os.open(repository, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SubtuneError(f"another rollout is changing {repository}; wait for it to finish") from None
        yield
    finally:
        os.close(fd)
