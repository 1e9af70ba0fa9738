"""Datasets for training, profiling, selection and calibration: `load_dataset(spec, split, ...)`.

Stable API (other tools import it):

    ds = load_dataset("fashion-mnist", "train", image_size=(64, 64), mean=m, std=s, limit=1000)
    ds.images   # float32 (N, 3, H, W), resized and normalised (materialised on first access)
    ds.labels   # int64 (N,); -1 for unlabelled pools
    ds.classes  # list[str]
    ds.batch(indices) / ds.batches(256)   # the same tensors, a batch at a time

Images are kept as uint8 at their stored size and resized/normalised per batch, so a large
dataset costs its stored bytes, not N*3*H*W floats (60k Fashion-MNIST images are 47 MB stored,
36 GB as 224px floats).

Splits. "test" reads the data's test split. "train" and "val" come from the labelled pool:
`limit` first draws a class-balanced subset of the pool (the low-data regime: "you have N
labelled images"), then `val_split` carves a stratified fraction of it off as validation. Data
with its own val/ folder uses that folder for "val" unless `val_split` is given. The same
`seed` always yields the same, disjoint train and val sets. "pool" is the labelled pool itself
(after `limit`, nothing carved off): what active learning chooses from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from subtune.errors import SubtuneError
from subtune.training.sources import Source, open_source

SPLITS = ("train", "val", "test", "pool")
DEFAULT_VAL_SPLIT = 0.2  # VTAB-1k's 800/200 proportion
MAX_MATERIALISE_BYTES = 4 << 30  # `.images` beyond this is refused: iterate with .batches()
MAX_DECODED_BYTES = 8 << 30  # image folders are decoded to uint8 at the training size up front


@dataclass
class ImageDataset:
    pixels: torch.Tensor  # uint8 (N, C, h, w) as stored, C in {1, 3}
    labels: torch.Tensor  # int64 (N,), -1 when unlabelled
    classes: list[str]
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    ids: list[str] = field(default_factory=list)  # source of each image, e.g. "train[123]" or "train/cat/1.png"
    name: str = ""
    info: dict = field(default_factory=dict)  # how it was drawn (spec, split, limit, seed, ...)
    _images: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def images(self) -> torch.Tensor:
        if self._images is None:
            need = len(self) * 3 * self.image_size[0] * self.image_size[1] * 4
            if need > MAX_MATERIALISE_BYTES:
                raise SubtuneError(f"{self.name}: {len(self)} images at {self.image_size[0]}x{self.image_size[1]} need "
                                   f"{need / 2**30:.1f} GiB as float32; use a smaller limit or image size, or "
                                   "iterate with .batches()")
            self._images = self.batch(np.arange(len(self)))
        return self._images

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Images `indices` as float32 (B, 3, H, W): resized, 3 channels, normalised."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        x = self.pixels[idx].float().div_(255.0)
        if tuple(x.shape[-2:]) != tuple(self.image_size):
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            idx = np.arange(start, min(start + batch_size, len(self)))
            yield self.batch(idx), self.labels[idx]

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageDataset":
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(self.pixels[torch.from_numpy(idx)], self.labels[torch.from_numpy(idx)], list(self.classes),
                            self.image_size, self.mean, self.std, [self.ids[i] for i in idx] if self.ids else [],
                            self.name, dict(self.info))

    @property
    def labelled(self) -> bool:
        return bool(len(self)) and bool((self.labels >= 0).all())

    def preprocess(self) -> dict:
        """What a deployment must do to an image: the task file's meta["preprocess"]."""
        return {"image_size": list(self.image_size), "mean": list(self.mean), "std": list(self.std), "channels": 3}


def load_dataset(spec: str, split: str, *, image_size: int | Sequence[int], mean: Sequence[float],
                 std: Sequence[float], limit: int | None = None, seed: int = 0, val_split: float | None = None,
                 label_map: str | dict | None = None) -> ImageDataset:
    """One split of a dataset, resized to `image_size` and normalised with `mean`/`std`.

    spec: "fashion-mnist[:DIR]", "imagefolder:DIR", "cifar10:DIR", "cifar100:DIR", "images:DIR".
    limit: a class-balanced subset drawn with `seed` (see the module docstring for how it
    interacts with val_split). label_map: coarser classes, see `parse_label_map`.
    """
    if split not in SPLITS:
        raise SubtuneError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    if split == "val" and not _labelled_spec(spec):
        raise SubtuneError(f"`data` {spec}: unlabelled images have no validation split")
    size = _size(image_size)
    if limit is not None and limit < 1:
        raise SubtuneError(f"`limit` {limit}: expected a positive number of images")
    if val_split is not None and not 0 < val_split < 1:
        raise SubtuneError(f"`val_split` {val_split}: expected a fraction between 0 and 1 (e.g. 0.2)")
    source = _open_cached(spec, size)
    labelled = bool(source.classes)
    has_val = "val" in source.pools
    if split == "test":
        if "test" not in source.pools:
            raise SubtuneError(f"`data` {spec}: no test split (an image folder needs a test/ folder)")
        pool_name, carve = "test", False
    elif split == "val" and has_val and val_split is None:
        pool_name, carve = "val", False
    else:
        pool_name, carve = "train", split != "pool" and labelled and (val_split is not None or not has_val)
    pool = source.pools[pool_name]
    labels, classes, dropped = pool.labels, list(source.classes), []
    if label_map is not None:
        if not labelled:
            raise SubtuneError(f"`data` {spec}: a label map needs labelled data")
        lut, classes, dropped = parse_label_map(label_map, source.classes)
        labels = lut[labels]
    keep = np.flatnonzero(labels >= 0) if labelled else np.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    if limit is not None and limit < len(keep):
        keep = keep[balanced_subset(labels[keep], limit, g)] if labelled else np.sort(
            keep[torch.randperm(len(keep), generator=g)[:limit].numpy()])
    if carve:
        train_idx, val_idx = stratified_split(labels[keep], val_split or DEFAULT_VAL_SPLIT, g)
        keep = keep[train_idx if split == "train" else val_idx]
    if len(keep) == 0:
        raise SubtuneError(f"`data` {spec}: the {split} split is empty (limit {limit}, val split {val_split})")
    if source.resized_on_load:  # decoded at the training size: check before decoding
        need = len(keep) * 3 * size[0] * size[1]
        if need > MAX_DECODED_BYTES:
            raise SubtuneError(f"`data` {spec}: {len(keep)} images at {size[0]}x{size[1]} take {need / 2**30:.1f} GiB "
                               f"decoded (limit {MAX_DECODED_BYTES / 2**30:.0f} GiB); use `limit` or a smaller `image_size`")
    pixels = pool.load(keep)
    info = {"spec": spec, "split": split, "source_split": pool_name, "limit": limit, "seed": seed,
            "val_split": (val_split or DEFAULT_VAL_SPLIT) if carve else None, "images": int(len(keep))}
    if label_map is not None:
        info["label_map"] = label_map if isinstance(label_map, str) else json.dumps(label_map)
        info["dropped_classes"] = dropped
    return ImageDataset(pixels, torch.from_numpy(labels[keep].copy()), classes, size,
                        tuple(float(x) for x in mean), tuple(float(x) for x in std),
                        [pool.ids[i] for i in keep], f"{spec} ({split})", info)


def _labelled_spec(spec: str) -> bool:
    return not spec.startswith("images:")


def balanced_subset(labels: np.ndarray, n: int, g: torch.Generator) -> np.ndarray:
    """Positions of `n` labels, as equal per class as the class sizes allow (seeded)."""
    classes = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    members = {c: m[torch.randperm(len(m), generator=g).numpy()] for c, m in members.items()}
    quota = {c: n // len(classes) for c in classes}
    for j in torch.randperm(len(classes), generator=g)[: n % len(classes)].tolist():
        quota[classes[j]] += 1
    # Classes smaller than their quota hand the rest to classes with spare images.
    short = sum(max(0, quota[c] - len(members[c])) for c in classes)
    quota = {c: min(quota[c], len(members[c])) for c in classes}
    while short > 0:
        spare = [c for c in classes if quota[c] < len(members[c])]
        for c in spare[:short]:
            quota[c] += 1
            short -= 1
    return np.sort(np.concatenate([members[c][: quota[c]] for c in classes]))


def stratified_split(labels: np.ndarray, fraction: float, g: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, val positions): `fraction` of each class to val, at least one image
    of each class with two or more kept for training."""
    train, val = [], []
    for c in np.unique(labels):
        m = np.flatnonzero(labels == c)
        m = m[torch.randperm(len(m), generator=g).numpy()]
        k = min(max(int(round(fraction * len(m))), 1 if len(m) > 1 else 0), len(m) - 1)
        val.append(m[:k])
        train.append(m[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def parse_label_map(label_map: str | dict, classes: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """`"tops=0,2,4,6;bottoms=1,3"`, a JSON file or a dict {new class: [old index or name, ...]}
    -> (lookup old label -> new label or -1, new class names, dropped old class names).

    Old classes may be given by index or by name; an old class left out is dropped from the data."""
    if isinstance(label_map, str):
        text = label_map.strip()
        if text.endswith(".json") or Path(text).is_file():
            try:
                groups = json.loads(Path(text).read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise SubtuneError(f"label map {text}: not a readable JSON file ({e})") from e
        else:
            groups = {}
            for part in filter(None, (p.strip() for p in text.split(";"))):
                name, eq, members = part.partition("=")
                if not eq or not name.strip():
                    raise SubtuneError(f"label map {text!r}: expected NEW=OLD,OLD;NEW=OLD (e.g. tops=0,2;bags=8)")
                groups[name.strip()] = [m.strip() for m in members.split(",") if m.strip()]
    else:
        groups = label_map
    if not isinstance(groups, dict) or not groups:
        raise SubtuneError("label map: expected at least one group NEW=OLD,... (or a JSON object)")
    lut = np.full(len(classes), -1, dtype=np.int64)
    for new, (name, members) in enumerate(groups.items()):
        if not isinstance(members, list) or not members:
            raise SubtuneError(f"label map: group {name!r} has no classes")
        for m in members:
            old = _class_index(m, classes)
            if lut[old] >= 0:
                raise SubtuneError(f"label map: class {classes[old]!r} is in two groups "
                                   f"({list(groups)[lut[old]]!r} and {name!r})")
            lut[old] = new
    return lut, [str(k) for k in groups], [classes[i] for i in np.flatnonzero(lut < 0)]


def _class_index(member, classes: list[str]) -> int:
    text = str(member).strip()
    if text in classes:
        return classes.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(classes):
        return int(text)
    raise SubtuneError(f"label map: unknown class {text!r}: expected an index 0..{len(classes) - 1} or one of "
                       f"{classes[:10]}")


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(x) for x in image_size)
        size = size * 2 if len(size) == 1 else size
    if len(size) != 2 or min(size) < 8:
        raise SubtuneError(f"`image_size` {image_size}: expected H or (H, W), at least 8 pixels")
    return size  # type: ignore[return-value]


_SOURCES: dict[tuple, Source] = {}


def _open_cached(spec: str, size: tuple[int, int]) -> Source:
    # Train, val and test come from one read of the files (Fashion-MNIST decompresses in ~1 s).
    key = (spec, size if spec.startswith(("imagefolder:", "images:")) else None)
    if key not in _SOURCES:
        if len(_SOURCES) >= 2:
            _SOURCES.pop(next(iter(_SOURCES)))
        _SOURCES[key] = open_source(spec, size)
    return _SOURCES[key]


def batch_order(n: int, batch_size: int, g: torch.Generator) -> list[np.ndarray]:
    """One epoch's batches. A last batch of a single image is dropped: training-mode BatchNorm
    cannot normalise one value per channel."""
    perm = torch.randperm(n, generator=g).numpy()
    batches = [perm[i: i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches
