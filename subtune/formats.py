"""The two file formats subtune reads and writes: a base model and a task delta.

Both are plain dicts of tensors and built-in types, saved with `torch.save` and read with
`torch.load(path, weights_only=True)`, so loading a file never runs code. The contract is
documented in README.md ("File formats"); bump the `/N` suffix on any incompatible change.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from subtune.atomic import atomic_path
from subtune.errors import SubtuneError
from subtune.models import Backbone, build_model, get_adapter

BASE_FORMAT = "subtune.base/1"
TASK_FORMAT = "subtune.task/1"
TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
RESERVED_NAMES = {"base", "images"}


def fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, shape, dtype and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_dict(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """torch.load with weights_only=True, turning every way a file can be wrong into one line."""
    path = Path(path)
    if not path.is_file():
        raise SubtuneError(f"{what} file {path} not found: expected a file written by subtune")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types here; all mean "not a safe subtune file"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            reason = "it contains pickled Python objects, which subtune never loads (they can run code)"
        elif not zipfile.is_zipfile(path):  # torch.save writes zip archives; a cut-off one loses its index
            reason = "it is truncated or not a PyTorch file"
        else:
            reason = f"it could not be read ({msg[:160]})"
        raise SubtuneError(f"{what} file {path}: {reason}; expected a {what} file written by subtune") from e
    if not isinstance(data, dict):
        raise SubtuneError(f"{what} file {path}: expected a dict, found {type(data).__name__}; pass a file written by subtune")
    return data


def _require_format(data: dict, path, expected: str, what: str) -> None:
    found = data.get("format")
    if found != expected:
        hint = " (this is a task file)" if found == TASK_FORMAT else " (this is a base file)" if found == BASE_FORMAT else ""
        raise SubtuneError(f"{path}: expected a {what} file (format {expected!r}), found format {found!r}{hint}")


def save_dict(path: str | os.PathLike, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


# --------------------------------------------------------------------------- base


@dataclass
class BaseModel:
    """A loaded base file: the architecture, its weights, and the model built from them."""

    arch: str
    arch_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    fingerprint: str
    path: str | None = None

    def build(self) -> tuple[nn.Module, Backbone]:
        """A fresh eval-mode model with the base weights (each call builds a new copy)."""
        model, backbone = build_model(self.arch, self.arch_kwargs)
        model.load_state_dict(self.state_dict)
        return model, backbone

    @property
    def input_size(self) -> tuple[int, int]:
        adapter, _ = get_adapter(self.arch)
        return adapter.input_size(self.arch_kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"format": BASE_FORMAT, "arch": self.arch, "arch_kwargs": self.arch_kwargs,
                "state_dict": self.state_dict, "fingerprint": self.fingerprint}


def make_base(arch: str, arch_kwargs: dict[str, Any] | None = None, *, weights: dict | None = None,
              seed: int = 0) -> BaseModel:
    """A base model from random weights (seeded) or from a plain state_dict."""
    arch_kwargs = dict(arch_kwargs or {})
    torch.manual_seed(seed)
    model, _ = build_model(arch, arch_kwargs)
    if weights is not None:
        adapter, _ = get_adapter(arch)
        mapped = adapter.map_state_dict(weights, model)
        own = model.state_dict()
        for k, v in mapped.items():
            if k in own and tuple(own[k].shape) != tuple(v.shape):
                raise SubtuneError(
                    f"weights tensor {k!r} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}: "
                    "check --num-classes and the architecture")
        model.load_state_dict(mapped)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return BaseModel(arch, arch_kwargs, sd, fingerprint(sd))


def load_base(path: str | os.PathLike) -> BaseModel:
    data = load_dict(path, "base")
    _require_format(data, path, BASE_FORMAT, "base")
    try:
        arch, kwargs, sd, fp = data["arch"], dict(data.get("arch_kwargs") or {}), data["state_dict"], data["fingerprint"]
    except KeyError as e:
        raise SubtuneError(f"{path}: base file lacks the key {e.args[0]!r}; rewrite it with `subtune base`") from e
    if fingerprint(sd) != fp:
        raise SubtuneError(f"{path}: the weights do not match the file's fingerprint (corrupted or edited); rewrite it with `subtune base`")
    base = BaseModel(arch, kwargs, sd, fp, str(path))
    model, _ = build_model(arch, kwargs)
    missing, unexpected = _diff_keys(model.state_dict(), sd)
    if missing or unexpected:
        raise SubtuneError(f"{path}: weights do not fit {arch} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return base


def save_base(path: str | os.PathLike, base: BaseModel) -> None:
    save_dict(path, base.to_dict())


def _diff_keys(expected: dict, found: dict) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(found)), sorted(set(found) - set(expected))


# --------------------------------------------------------------------------- task


TASK_KINDS = ("delta", "tap")


@dataclass
class TaskDelta:
    """A task: new weights for blocks first..last (1-based, inclusive) and a new head (kind
    "delta": SubTuning, LoRA merged into its blocks, pruned tasks); or a head on the base's own
    activations with no blocks at all (kind "tap": Head2Toe, the linear probe), which the
    compiler attaches to the shared stream without forking it. `taps` (tap tasks only):

        {"points": [{"point": P, "grid": [gh, gw] or None, "dim": D}, ...],
         "select": LongTensor [k] or None}

    P numbers backbone points as the trainer does (1: the stem's output, k: block k's input,
    N + 1: the last block's output, N + 2: the features the classifier sees); a feature map is
    average-pooled to the grid and flattened channel-major (D = channels * gh * gw), a token
    sequence is averaged over its tokens (grid None), features are taken as they are. The
    pooled points are concatenated in order, `select` picks columns of that (ascending; None:
    all), and the head sees the result."""

    name: str
    base_fingerprint: str
    arch: str
    blocks: list[int]
    block_state: dict[str, dict[str, torch.Tensor]]
    head: dict[str, torch.Tensor]
    siamese: bool = False
    classes: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    taps: dict[str, Any] | None = None  # kind "tap" only (see above)

    @property
    def kind(self) -> str:
        return "tap" if self.taps is not None else "delta"

    @property
    def first(self) -> int | None:
        """The first tuned block; None for a tap task (it tunes none and never forks)."""
        return self.blocks[0] if self.blocks else None

    @property
    def last(self) -> int | None:
        return self.blocks[-1] if self.blocks else None

    @property
    def tap_points(self) -> list[int]:
        return [int(p["point"]) for p in self.taps["points"]] if self.taps is not None else []

    @property
    def num_classes(self) -> int:
        return int(self.head["weight"].shape[0])

    def to_dict(self) -> dict[str, Any]:
        out = {"format": TASK_FORMAT, "name": self.name, "base_fingerprint": self.base_fingerprint,
               "arch": self.arch, "blocks": list(self.blocks), "block_state": self.block_state,
               "head": self.head, "siamese": bool(self.siamese), "classes": self.classes, "meta": self.meta}
        if self.taps is not None:  # files of delta tasks stay exactly as before
            out.update(kind="tap", taps=self.taps)
        return out


def make_task(base: BaseModel, name: str, blocks: list[int], block_modules: list[nn.Module], head: nn.Linear,
              *, siamese: bool = False, classes: list[str] | None = None,
              meta: dict[str, Any] | None = None) -> TaskDelta:
    """A task delta from trained modules (the Python API the trainer uses)."""
    state = {str(b): {k: v.detach().cpu().clone().contiguous() for k, v in m.state_dict().items()}
             for b, m in zip(blocks, block_modules, strict=True)}
    head_sd = {"weight": head.weight.detach().cpu().clone().contiguous(),
               "bias": (head.bias.detach().cpu().clone() if head.bias is not None
                        else torch.zeros(head.out_features))}
    task = TaskDelta(name, base.fingerprint, base.arch, list(blocks), state, head_sd, siamese, classes, dict(meta or {}))
    validate_task(task, base)
    return task


def make_tap_task(base: BaseModel, name: str, points: list[dict[str, Any]], head: nn.Linear, *,
                  select: torch.Tensor | None = None, classes: list[str] | None = None,
                  meta: dict[str, Any] | None = None, input_size: tuple[int, int] | None = None) -> TaskDelta:
    """A tap task (Head2Toe, the linear probe): `points` as in TaskDelta's docstring."""
    taps = {"points": [{"point": int(p["point"]), "grid": None if p.get("grid") is None else [int(g) for g in p["grid"]],
                        "dim": int(p["dim"])} for p in points],
            "select": None if select is None else select.detach().cpu().to(torch.int64).clone().contiguous()}
    head_sd = {"weight": head.weight.detach().cpu().clone().contiguous(),
               "bias": (head.bias.detach().cpu().clone() if head.bias is not None else torch.zeros(head.out_features))}
    task = TaskDelta(name, base.fingerprint, base.arch, [], {}, head_sd, False, classes, dict(meta or {}), taps=taps)
    validate_task(task, base, input_size=input_size)
    return task


def save_task(path: str | os.PathLike, task: TaskDelta) -> None:
    data = task.to_dict()
    save_dict(path, {**data, TASK_HASH_KEY: task_tensors_hash(data)})


def load_task(path: str | os.PathLike) -> TaskDelta:
    data = load_dict(path, "task")
    _require_format(data, path, TASK_FORMAT, "task")
    _check_task_hash(data, path)
    kind = data.get("kind", "delta")  # files written before tap tasks existed have no "kind"
    if kind not in TASK_KINDS:
        raise SubtuneError(f"{path}: task kind {kind!r} is not one this subtune knows ({', '.join(TASK_KINDS)}); "
                           "upgrade subtune or rewrite the task")
    try:
        task = TaskDelta(
            name=str(data["name"]), base_fingerprint=str(data["base_fingerprint"]), arch=str(data["arch"]),
            blocks=[int(b) for b in data["blocks"]], block_state=dict(data["block_state"]),
            head=dict(data["head"]), siamese=bool(data.get("siamese", False)),
            classes=list(data["classes"]) if data.get("classes") is not None else None,
            meta=dict(data.get("meta") or {}), path=str(path),
            taps=_parse_taps(data["taps"]) if kind == "tap" else None)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SubtuneError(f"{path}: malformed task file ({type(e).__name__}: {e}); rewrite it with subtune") from e
    check_preprocess(task.meta, str(path))
    return task


# Integrity and preprocessing of task files (kept together, small: other parts of this file
# change more often).

TASK_HASH_KEY = "tensors_sha256"  # files written before it existed have none and still load


def task_tensors_hash(data: dict[str, Any]) -> str:
    """sha256 over every tensor in a task file's dict (blocks, head, taps, meta), by its path
    in the dict, as `fingerprint` does for a base's state_dict."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            tensors[where] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                if where or k != TASK_HASH_KEY:
                    walk(v, f"{where}/{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{where}/{i}")

    walk(data, "")
    return fingerprint(tensors)


def _check_task_hash(data: dict[str, Any], path) -> None:
    if TASK_HASH_KEY in data and data[TASK_HASH_KEY] != task_tensors_hash(data):
        raise SubtuneError(f"{path}: the task's tensors do not match the file's {TASK_HASH_KEY} (corrupted or "
                           "edited); retrain the task or restore the file")


def check_preprocess(meta: dict[str, Any], where: str) -> dict[str, Any] | None:
    """meta["preprocess"] as every consumer may rely on it, or None when the task has none:
    {"image_size": [H, W] (positive ints), "mean": [C floats], "std": [C positive floats],
    "channels": C (1 or 3; 3 when absent)}; other keys pass through."""
    pre = meta.get("preprocess")
    if pre is None:
        return None
    expected = ("expected {'image_size': [H, W], 'mean': [3 numbers], 'std': [3 positive numbers], "
                "'channels': 3}; retrain the task or fix its meta")

    def bad(problem: str) -> SubtuneError:
        return SubtuneError(f"{where}: meta['preprocess'] {problem}; {expected}")

    if not isinstance(pre, dict):
        raise bad(f"is a {type(pre).__name__}")
    missing = [k for k in ("image_size", "mean", "std") if k not in pre]
    if missing:
        raise bad(f"lacks {', '.join(map(repr, missing))}")
    size, channels = pre["image_size"], pre.get("channels", 3)
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in size)):
        raise bad(f"has image_size {size!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise bad(f"has channels {channels!r}")
    for key in ("mean", "std"):
        v = pre[key]
        if (not isinstance(v, (list, tuple)) or len(v) != channels
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x == x for x in v)):
            raise bad(f"has {key} {v!r} (for {channels} channels)")
    if not all(x > 0 for x in pre["std"]):
        raise bad(f"has std {pre['std']!r}, not all positive")
    return pre


def _parse_taps(raw: Any) -> dict[str, Any]:
    points = [{"point": int(p["point"]), "grid": None if p.get("grid") is None else [int(g) for g in p["grid"]],
               "dim": int(p["dim"])} for p in raw["points"]]
    select = raw.get("select")
    if select is not None and not isinstance(select, torch.Tensor):
        raise TypeError(f"taps['select'] must be an integer tensor or None, found {type(select).__name__}")
    return {"points": points, "select": select}


def validate_task(task: TaskDelta, base: BaseModel, backbone: Backbone | None = None, *,
                  input_size: tuple[int, int] | None = None) -> None:
    """Check a task against its base before any work: fingerprint, block range, block state
    shapes, head shape (tap tasks: their points, pooled sizes and selection). Raises
    SubtuneError naming the file and the problem."""
    where = task.path or task.name
    if not TASK_NAME.match(task.name) or task.name in RESERVED_NAMES:
        raise SubtuneError(f"{where}: task name {task.name!r} is not usable as an output name: expected letters, "
                           "digits, '_' or '-' (starting with a letter or '_', not 'base'/'images'); rename the task")
    if task.base_fingerprint != base.fingerprint:
        raise SubtuneError(f"{where}: task {task.name!r} was trained on another base (fingerprint "
                           f"{task.base_fingerprint[:12]}…, this base is {base.fingerprint[:12]}…); "
                           "compile it with the base it was trained from")
    if task.arch != base.arch:
        raise SubtuneError(f"{where}: task is for {task.arch}, base is {base.arch}")
    if backbone is None:
        _, backbone = build_model(base.arch, base.arch_kwargs)
    if task.taps is not None:
        _validate_taps(task, base, backbone, where, input_size)
        return
    n = backbone.num_blocks
    b = task.blocks
    if not b or any(x < 1 or x > n for x in b):
        raise SubtuneError(f"{where}: blocks {b} out of range: {base.arch} has blocks 1..{n}")
    if b != list(range(b[0], b[0] + len(b))):
        raise SubtuneError(f"{where}: blocks {b} are not consecutive and ascending: expected e.g. [{b[0]}, {b[0] + 1}]")
    if sorted(task.block_state, key=int) != [str(x) for x in b]:
        raise SubtuneError(f"{where}: block_state has blocks {sorted(task.block_state)}, expected {[str(x) for x in b]}")
    pruned = _pruned_blocks(task, where)
    for blk in b:
        expected = backbone.blocks[blk - 1].state_dict()
        found = task.block_state[str(blk)]
        missing, unexpected = _diff_keys(expected, found)
        if missing or unexpected:
            raise SubtuneError(f"{where}: block {blk} state does not fit the block (missing {missing[:3]}, "
                                   f"unexpected {unexpected[:3]}); was the task trained on {base.arch}?")
        if str(blk) in pruned:  # smaller shapes, checked by rebuilding and running the block
            _check_pruned_block(where, blk, backbone.blocks[blk - 1], found, pruned[str(blk)])
            continue
        for k, v in found.items():
            if k in expected and tuple(v.shape) != tuple(expected[k].shape):
                raise SubtuneError(f"{where}: block {blk} tensor {k!r} has shape {tuple(v.shape)}, the block expects "
                                   f"{tuple(expected[k].shape)}")
    w, bias = task.head.get("weight"), task.head.get("bias")
    in_dim = backbone.feature_dim * (2 if task.siamese else 1)
    if w is None or bias is None or w.ndim != 2 or bias.ndim != 1 or w.shape[0] != bias.shape[0]:
        raise SubtuneError(f"{where}: head must be {{'weight': [classes, {in_dim}], 'bias': [classes]}}")
    if w.shape[1] != in_dim:
        what = "[base features, task features]" if task.siamese else "the features"
        raise SubtuneError(f"{where}: head takes {w.shape[1]} inputs, but {what} have {in_dim} "
                           f"({'siamese' if task.siamese else 'plain'} head on {base.arch})")
    if task.classes is not None and len(task.classes) != w.shape[0]:
        raise SubtuneError(f"{where}: {len(task.classes)} class names for a head with {w.shape[0]} outputs")


def _validate_taps(task: TaskDelta, base: BaseModel, backbone: Backbone, where: str,
                   input_size: tuple[int, int] | None) -> None:
    n = backbone.num_blocks
    if task.blocks or task.block_state or task.siamese:
        raise SubtuneError(f"{where}: a tap task tunes no blocks and has no siamese head (found blocks {task.blocks}, "
                           f"siamese {task.siamese}); rewrite it with `subtune train`")
    points = task.taps["points"]
    if not points:
        raise SubtuneError(f"{where}: a tap task needs at least one tap point")
    nums = [p["point"] for p in points]
    if any(p < 1 or p > n + 2 for p in nums) or nums != sorted(set(nums)):
        raise SubtuneError(f"{where}: tap points {nums} must be ascending, distinct and within 1..{n + 2} "
                           f"({base.arch}: 1 is the stem's output, {n + 1} the last block's, {n + 2} the features)")
    if "pruned" in task.meta:
        raise SubtuneError(f"{where}: a tap task has no blocks to prune, but meta['pruned'] is set")
    from subtune.delta.modules import tap_dims  # runs the base once on a dummy image: pure torch

    size = input_size or _trained_size(task) or base.input_size
    found = tap_dims(backbone, points, size)
    for p, d in zip(points, found):
        if p["dim"] != d:
            raise SubtuneError(f"{where}: tap at point {p['point']} (grid {p['grid']}) gives {d} features on {base.arch} "
                               f"at {size[0]}x{size[1]}, the task expects {p['dim']}; was it trained on this base?")
    total = sum(found)
    select = task.taps["select"]
    if select is not None:
        if select.ndim != 1 or select.dtype not in (torch.int64, torch.int32) or not len(select):
            raise SubtuneError(f"{where}: taps['select'] must be a non-empty 1-d integer tensor")
        if int(select.min()) < 0 or int(select.max()) >= total or not bool((select[1:] > select[:-1]).all()):
            raise SubtuneError(f"{where}: taps['select'] must be ascending distinct indices in 0..{total - 1}")
    in_dim = total if select is None else len(select)
    w, bias = task.head.get("weight"), task.head.get("bias")
    if w is None or bias is None or w.ndim != 2 or bias.ndim != 1 or w.shape[0] != bias.shape[0] or w.shape[1] != in_dim:
        raise SubtuneError(f"{where}: head must be {{'weight': [classes, {in_dim}], 'bias': [classes]}} for its "
                           f"{in_dim} selected features")
    if task.classes is not None and len(task.classes) != w.shape[0]:
        raise SubtuneError(f"{where}: {len(task.classes)} class names for a head with {w.shape[0]} outputs")


def _trained_size(task: TaskDelta) -> tuple[int, int] | None:
    pre = task.meta.get("preprocess")
    if isinstance(pre, dict) and pre.get("image_size"):
        return tuple(int(x) for x in pre["image_size"])
    return None


# Pruned tasks (subtune/delta/pruned.py has the contract): imported lazily, pure torch.


def _pruned_blocks(task: TaskDelta, where: str) -> dict[str, dict]:
    if "pruned" not in task.meta:
        return {}
    from subtune.delta.pruned import pruned_blocks

    try:
        blocks = pruned_blocks(task.meta)
    except SubtuneError as e:
        raise SubtuneError(f"{where}: {e}") from e
    if not set(blocks) <= {str(x) for x in task.blocks}:
        raise SubtuneError(f"{where}: meta['pruned'] describes blocks {sorted(blocks, key=int)}, the task tunes {task.blocks}")
    return blocks


def _check_pruned_block(where: str, blk: int, base_block: nn.Module, state: dict, spec: dict) -> None:
    from subtune.delta.pruned import check_pruned_block

    try:
        check_pruned_block(base_block, state, spec)
    except SubtuneError as e:
        raise SubtuneError(f"{where}: pruned block {blk}: {e}") from e
