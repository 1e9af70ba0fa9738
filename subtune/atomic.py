"""Write-then-rename, so a failed command never leaves a partial output file behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from subtune.errors import SubtuneError


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, when the output cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise SubtuneError(f"output {path} is a directory: expected a file path")
    if not parent.is_dir():
        raise SubtuneError(f"cannot write {path}: folder {parent} does not exist; create it or choose another -o")
    if not os.access(parent, os.W_OK):
        raise SubtuneError(f"cannot write {path}: folder {parent} is not writable; choose another -o")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_files(*paths: str | os.PathLike) -> Iterator[tuple[Path, ...]]:
    """Yield temporary paths for several files of one folder; rename them over `paths` only if
    the block succeeds, the first path last (put the file that refers to the others first: an
    ONNX model before its external data, so a reader never sees the new model without its
    weights). A file the block did not write is not renamed. The temporaries keep their final
    names inside a fresh hidden folder beside the targets, so files that refer to each other by
    name (ONNX external data) stay consistent."""
    targets = [check_writable(p) for p in paths]
    parent = targets[0].parent
    if any(t.parent.resolve() != parent.resolve() for t in targets) or len({t.name for t in targets}) != len(targets):
        raise ValueError(f"atomic_files needs distinct files in one folder, got {[str(t) for t in targets]}")
    folder = Path(tempfile.mkdtemp(prefix=f".{targets[0].name}.", suffix=".tmp", dir=parent))
    temps = tuple(folder / t.name for t in targets)
    try:
        yield temps
        mode = 0o666 & ~_umask()
        for tmp, target in reversed(list(zip(temps, targets))):
            if tmp.exists():
                os.chmod(tmp, mode)
                os.replace(tmp, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status,
    Linux 4.7+): setting it to read it back would change it, for a moment, for every thread."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it, then set it back
    os.umask(mask)
    return mask
