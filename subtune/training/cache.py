"""Cached activations (paper §3.2): run the frozen layers over a dataset once, keep the result.

`ActivationStore(backbone, dataset).get(point)` returns the activations at a backbone point
(see `network` for the numbering) for every image, computing them from the deepest point
already held (so a profile that walks blocks 1..N runs each frozen block once over the data).
They live in memory when they fit the budget, else in an unlinked file under `cache_dir`
(after checking the free space), else the store refuses with a message naming the ways out.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections import OrderedDict

import numpy as np
import torch

from subtune.errors import SubtuneError
from subtune.models import Backbone
from subtune.training.data import ImageDataset
from subtune.training.network import fast_layout, features_point, run_frozen


def default_memory_budget() -> int:
    """Half of the memory available now (what the OS reports), at most 16 GiB."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        avail = 8 << 30
    return min(avail // 2, 16 << 30)


def point_name(point: int, backbone: Backbone) -> str:
    n = backbone.num_blocks
    return ("the images" if point == 0 else f"block {point}'s input" if point <= n
            else "the last block's output" if point == n + 1 else "the features")


class Activations:
    """Activations of every image at one point: a tensor, or a memory-mapped file."""

    def __init__(self, data: torch.Tensor | np.memmap):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes) if isinstance(self.data, np.memmap) else self.data.numel() * self.data.element_size()

    def __getitem__(self, idx) -> torch.Tensor:
        idx = np.asarray(idx)
        if isinstance(self.data, np.memmap):
            return torch.from_numpy(np.ascontiguousarray(self.data[idx]))
        return self.data[torch.from_numpy(idx)]


class ActivationStore:
    def __init__(self, backbone: Backbone, dataset: ImageDataset, *, batch_size: int = 256,
                 memory_budget: int | None = None, cache_dir: str | None = None, keep: int = 2):
        self.backbone, self.dataset, self.batch_size = backbone, dataset, batch_size
        self.memory_budget = default_memory_budget() if memory_budget is None else memory_budget
        self.cache_dir, self.keep = cache_dir, keep
        self._held: OrderedDict[int, Activations] = OrderedDict()  # LRU, features excluded
        self._features: Activations | None = None  # kept for good: small and needed by every siamese run
        self.seconds = 0.0  # time spent running frozen layers

    def get(self, point: int) -> Activations:
        if point == features_point(self.backbone) and self._features is not None:
            return self._features
        if point in self._held:
            self._held.move_to_end(point)
            return self._held[point]
        start = max((p for p in self._held if p <= point), default=0)
        acts = self._compute(start, point)
        if point == features_point(self.backbone):
            self._features = acts
        else:
            self._held[point] = acts
            while len(self._held) > self.keep:
                self._held.popitem(last=False)
        return acts

    def _compute(self, start: int, stop: int) -> Activations:
        from tqdm import tqdm

        began = time.perf_counter()
        n, bb = len(self.dataset), self.backbone
        out = None
        bar = tqdm(total=n, desc=f"caching {point_name(stop, bb)} ({self.dataset.info.get('split', 'data')})",
                   unit="img", file=sys.stderr, leave=False, disable=not sys.stderr.isatty())
        for lo in range(0, n, self.batch_size):
            idx = np.arange(lo, min(lo + self.batch_size, n))
            x = self.dataset.batch(idx) if start == 0 else self._held[start][idx]
            y = run_frozen(bb, fast_layout(x), start, stop)
            if out is None:
                out = self._allocate((n, *y.shape[1:]), stop)
            if isinstance(out, np.memmap):
                out[lo: lo + len(idx)] = y.numpy()
            else:
                out[lo: lo + len(idx)] = y
            bar.update(len(idx))
        bar.close()
        self.seconds += time.perf_counter() - began
        return Activations(out)

    def _allocate(self, shape: tuple[int, ...], point: int) -> torch.Tensor | np.memmap:
        need = int(np.prod(shape)) * 4
        held = sum(a.nbytes for a in self._held.values())
        if need + held <= self.memory_budget:
            return torch.empty(shape, dtype=torch.float32)
        what = f"caching {point_name(point, self.backbone)} for {shape[0]} images needs {need / 2**30:.1f} GiB"
        if not self.cache_dir:
            raise SubtuneError(f"{what}, over the {self.memory_budget / 2**30:.1f} GiB memory budget: pass `cache_dir` DIR "
                               "to keep it on disk, `cache=False` to recompute the frozen layers every step (slower), "
                               "or lower `limit` / `image_size`")
        if not os.path.isdir(self.cache_dir):
            raise SubtuneError(f"`cache_dir` {self.cache_dir} is not a folder")
        free = shutil.disk_usage(self.cache_dir).free
        if need * 1.1 > free:
            raise SubtuneError(f"{what} but {self.cache_dir} has {free / 2**30:.1f} GiB free: choose another "
                               "`cache_dir`, `cache=False`, or lower `limit` / `image_size`")
        fd, path = tempfile.mkstemp(prefix="subtune-activations-", suffix=".f32", dir=self.cache_dir)
        os.close(fd)
        try:
            mm = np.memmap(path, dtype=np.float32, mode="w+", shape=shape)
        finally:
            os.unlink(path)  # the mapping keeps the data; nothing is left behind if we crash
        return mm
