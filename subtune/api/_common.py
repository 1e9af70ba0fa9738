"""Pieces every verb of the API shares: loading paths or objects, report paths, progress lines."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from subtune.errors import SubtuneError

log = logging.getLogger("subtune")


def _where(obj) -> str:
    if isinstance(obj, (str, os.PathLike)):
        return str(obj)
    return getattr(obj, "path", None) or f"<in memory: {getattr(obj, 'name', None) or getattr(obj, 'arch', '?')}>"


def _load_base(base):
    from subtune.formats import load_base
    from subtune.models import BaseModel

    if isinstance(base, BaseModel):
        return base
    if isinstance(base, (str, os.PathLike)):
        return load_base(base)
    raise SubtuneError(f"base: expected a path or a subtune.models.BaseModel, found {type(base).__name__}")


def _load_task(task, *, mmap: bool = False):
    """`mmap`: a path's tensors are mapped from the file (formats.load_task), for the compiler."""
    from subtune.delta import TaskDelta
    from subtune.formats import load_task

    if isinstance(task, TaskDelta):
        return task
    if isinstance(task, (str, os.PathLike)):
        return load_task(task, mmap=mmap)
    raise SubtuneError(f"task: expected a path or a subtune.delta.TaskDelta, found {type(task).__name__}")


def _batches(values, what: str) -> tuple[int, ...]:
    values = tuple(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise SubtuneError(f"{what} expects positive batch sizes, found {list(values)}")
    return values


def _image_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    values = (size,) if isinstance(size, int) else tuple(size)
    if len(values) not in (1, 2) or not all(isinstance(v, int) and v >= 1 for v in values):
        raise SubtuneError(f"`image_size` expects H or (H, W) in pixels, found {size!r}")
    return (values[0], values[-1])


def _same_file(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) or (a.exists() and b.exists() and os.path.samefile(a, b))


def report_path(report, out: Path | None, suffix: str) -> Path | None:
    """True: `<output stem><suffix>` beside the output (none without an output); a path: there;
    False/None: no report. Checked writable, and never the output itself."""
    from subtune.atomic import check_writable

    if report is None or report is False:
        return None
    if report is True:
        if out is None:
            return None
        report = out.with_suffix(suffix)
    path = check_writable(Path(report))
    if out is not None and Path(path).resolve() == Path(out).resolve():
        raise SubtuneError(f"`report` {path} is the same file as `output` {out}: choose another report path")
    return Path(path)


def say(on_progress: Callable[[str], None] | None, message: str) -> None:
    """A progress line: logged at INFO on the "subtune" logger, and handed to `on_progress`
    (the command line passes print, so its output is what it always was)."""
    log.info("%s", message)
    if on_progress is not None:
        on_progress(message)
