"""Progress display on stderr (tqdm), quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
import time


class StepProgress:
    """A bar over named pipeline steps: `with StepProgress("compiling") as p: p.step("export")`."""

    def __init__(self, title: str, total: int | None = None):
        self.title, self.total = title, total
        self._bar = None
        self._start = time.perf_counter()

    def __enter__(self) -> "StepProgress":
        from tqdm import tqdm

        self._bar = tqdm(total=self.total, desc=self.title, unit="step", file=sys.stderr,
                         disable=not sys.stderr.isatty(), bar_format="{desc}: {n} steps [{elapsed}] {postfix}")
        return self

    def step(self, name: str) -> None:
        self._bar.set_postfix_str(name)
        self._bar.update(1)

    def __exit__(self, *exc) -> None:
        self._bar.close()
