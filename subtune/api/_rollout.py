"""`subtune.rollout`: what `subtune rollout` does. Check a new compiled graph against the version a
running Triton server serves, write it as the repository's next version, have the server load it
and retire the old one, without dropping a request; or serve the previous version again."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from subtune.serving.rollout import RolloutResult

log = logging.getLogger("subtune")

__all__ = ["RolloutResult", "rollout"]


def rollout(repository: str | os.PathLike, new_graph: str | os.PathLike | None = None, *, rollback: bool = False,
            url: str = "127.0.0.1:8000", name: str | None = None, replace: Iterable[str] = (),
            data: str | None = None, check_images: int = 16, dry_run: bool = False, timeout: float = 300.0,
            on_progress: Callable[[str], None] | None = None) -> "RolloutResult":
    """Serve `new_graph` (a compiled model.onnx, with its .data weights file beside it when it has
    one) as the next version of the graph model in the Triton repository `repository`, which the
    server at `url` (HOST:PORT of its HTTP endpoint) serves; or, with `rollback`, the version
    served before the current one.

    Before anything is written, the new graph is checked against the version being served: the
    same base and inputs; on `check_images` images (from the dataset `data`, e.g.
    "imagefolder:DIR", else random pixel images preprocessed as the tasks were trained) the base
    output and every task in both versions answer as before (bit-identical where the shared
    layers run the same batch layout, else within the compile tolerance), except the tasks named
    in `replace` (retrained), which must differ; added and removed tasks are listed. `dry_run`
    stops after the check (no server contacted). `name`: the graph model, when the repository
    holds several. `timeout`: seconds the server may take to load the new version.

    Refusals and failures raise SubtuneError (one line); then the served version and the
    repository are as they were. Progress lines go to the "subtune" logger and `on_progress`.
    Returns the RolloutResult: the comparison, the version served before and now, the files
    written, the server's load time and how its answers compared."""
    from subtune.errors import SubtuneError
    from subtune.serving.rollout import RolloutOptions, rollout as run

    if isinstance(replace, str):
        replace = [replace]
    replace = tuple(dict.fromkeys(t.strip() for t in replace if t.strip()))
    if not timeout > 0:
        raise SubtuneError(f"timeout {timeout}: expected a positive number of seconds")

    def progress(line: str) -> None:
        log.info("%s", line)
        if on_progress is not None:
            on_progress(line)

    options = RolloutOptions(url=url, name=name, data=data, check_images=check_images, replace=replace,
                             dry_run=dry_run, timeout_s=float(timeout))
    return run(repository, new_graph, rollback=rollback, options=options, on_progress=progress)


def __getattr__(attr: str):
    if attr == "RolloutResult":  # the result class, without importing the serving package up front
        from subtune.serving.rollout import RolloutResult

        return RolloutResult
    raise AttributeError(attr)
