"""The two file formats subtune reads and writes: a base model (subtune.models.BaseModel) and a
task delta (subtune.delta.TaskDelta).

Both are plain dicts of tensors and built-in types, saved with `torch.save` and read with
`torch.load(path, weights_only=True)`, so loading a file never runs code. The contract is
documented in docs/formats.md; bump the `/N` suffix on any incompatible change.
"""

from __future__ import annotations

import os
import weakref
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import torch

from subtune.atomic import atomic_path
from subtune.delta.task import TASK_KINDS, TaskDelta, check_preprocess
from subtune.errors import SubtuneError
from subtune.models import BaseModel, build_model, diff_keys, fingerprint

BASE_FORMAT = "subtune.base/1"
TASK_FORMAT = "subtune.task/1"


def load_dict(path: str | os.PathLike, what: str, *, mmap: bool = False) -> dict[str, Any]:
    """torch.load with weights_only=True, turning every way a file can be wrong into one line.
    `mmap`: the tensors are views of the file mapped into memory (copy-on-write), read from disk
    when first touched, instead of copies."""
    path = Path(path)
    if not path.is_file():
        raise SubtuneError(f"{what} file {path} not found: expected a file written by subtune")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
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


def base_to_dict(base: BaseModel) -> dict[str, Any]:
    """A base as the dict its file holds."""
    return {"format": BASE_FORMAT, "arch": base.arch, "arch_kwargs": base.arch_kwargs,
            "state_dict": base.state_dict, "fingerprint": base.fingerprint}


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
    missing, unexpected = diff_keys(model.state_dict(), sd)
    if missing or unexpected:
        raise SubtuneError(f"{path}: weights do not fit {arch} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return base


def save_base(path: str | os.PathLike, base: BaseModel) -> None:
    save_dict(path, base_to_dict(base))


# --------------------------------------------------------------------------- task


def task_to_dict(task: TaskDelta) -> dict[str, Any]:
    """A task as the dict its file holds."""
    out = {"format": TASK_FORMAT, "name": task.name, "base_fingerprint": task.base_fingerprint,
           "arch": task.arch, "blocks": list(task.blocks), "block_state": task.block_state,
           "head": task.head, "siamese": bool(task.siamese), "classes": task.classes, "meta": task.meta}
    if task.taps is not None:  # files of delta tasks stay exactly as before
        out.update(kind="tap", taps=task.taps)
    return out


def save_task(path: str | os.PathLike, task: TaskDelta) -> None:
    data = task_to_dict(task)
    save_dict(path, {**data, TASK_HASH_KEY: task_tensors_hash(data)})


def load_task(path: str | os.PathLike, *, mmap: bool = False) -> TaskDelta:
    """A task file. `mmap=True`: the tensors stay in the file, mapped into memory, and
    `release_task_memory` gives back what was read of them (the compiler does, so 100 tasks need
    not all be in memory at once); the file must then not change while the task is in use."""
    data = load_dict(path, "task", mmap=mmap)
    _require_format(data, path, TASK_FORMAT, "task")
    _check_task_hash(data, path)
    task = _task_from_dict(data, path)
    if mmap:
        _MAPPED[id(task)] = _Mapped(weakref.ref(task, _forget(id(task))), _file_signature(path), *_tensor_holders(task))
        release_task_memory(task)  # the hash check read every tensor: map them again, unread
    return task


def _task_from_dict(data: dict[str, Any], path: str | os.PathLike) -> TaskDelta:
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


def release_task_memory(task: TaskDelta) -> None:
    """Give back the memory that reading the tensors of a task loaded with
    `load_task(path, mmap=True)` took: they are mapped from the file again, unread, and the pages
    read so far go with the old mapping once nothing else holds its tensors. Any other task (in
    memory, or whose tensor dicts were replaced since it was loaded) is left as it is.

    Copy-on-write: a mapped tensor changed in place loses the change here, so only code that loaded
    the task itself and never writes to it (the compiler) calls this."""
    mapped = _MAPPED.get(id(task))
    if mapped is None or mapped.task() is not task or _tensor_holders(task) != (mapped.block_state, mapped.head):
        return
    if _file_signature(task.path) != mapped.signature:
        raise SubtuneError(f"{task.path}: the task file changed while it was in use; compile again")
    fresh = _task_from_dict(load_dict(task.path, "task", mmap=True), task.path)
    task.block_state, task.head, task.taps = fresh.block_state, fresh.head, fresh.taps
    _MAPPED[id(task)] = mapped._replace(block_state=id(task.block_state), head=id(task.head))


class _Mapped(NamedTuple):
    task: weakref.ref  # the TaskDelta load_task made (an id alone could be reused once it is gone)
    signature: tuple[int, int, int, int]  # of its file when loaded: device, inode, size, mtime
    block_state: int  # ids of the dicts load_task filled in: a task given other dicts is not released
    head: int


_MAPPED: dict[int, _Mapped] = {}  # id(task) -> the file its tensors are mapped from


def _forget(key: int):
    """The callback that drops a task's entry when the task is gone (and not a newer task's)."""
    def callback(ref: weakref.ref) -> None:
        if key in _MAPPED and _MAPPED[key].task is ref:
            del _MAPPED[key]
    return callback


def _tensor_holders(task: TaskDelta) -> tuple[int, int]:
    return id(task.block_state), id(task.head)


def _file_signature(path: str | os.PathLike) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


# Integrity of task files.

TASK_HASH_KEY = "tensors_sha256"  # files written before it existed have none and still load


def task_tensors_hash(data: dict[str, Any]) -> str:
    """sha256 over every tensor in a task file's dict (blocks, head, taps, meta), by its path
    in the dict, as `fingerprint` does for a base's state_dict."""
    tensors: dict[str, torch.Tensor] = {}
    # A loop, not a recursive closure: a closure that calls itself is a reference cycle, which would
    # keep the tensors (and a mapped file's pages) alive until the garbage collector runs.
    pending: list[tuple[Any, str]] = [(data, "")]
    while pending:
        value, where = pending.pop()
        if isinstance(value, torch.Tensor):
            tensors[where] = value
        elif isinstance(value, dict):
            pending.extend((v, f"{where}/{k}") for k, v in value.items() if where or k != TASK_HASH_KEY)
        elif isinstance(value, (list, tuple)):
            pending.extend((v, f"{where}/{i}") for i, v in enumerate(value))
    return fingerprint(tensors)


def _check_task_hash(data: dict[str, Any], path) -> None:
    if TASK_HASH_KEY in data and data[TASK_HASH_KEY] != task_tensors_hash(data):
        raise SubtuneError(f"{path}: the task's tensors do not match the file's {TASK_HASH_KEY} (corrupted or "
                           "edited); retrain the task or restore the file")


def _parse_taps(raw: Any) -> dict[str, Any]:
    points = [{"point": int(p["point"]), "grid": None if p.get("grid") is None else [int(g) for g in p["grid"]],
               "dim": int(p["dim"])} for p in raw["points"]]
    select = raw.get("select")
    if select is not None and not isinstance(select, torch.Tensor):
        raise TypeError(f"taps['select'] must be an integer tensor or None, found {type(select).__name__}")
    return {"points": points, "select": select}
