"""Readers for the on-disk dataset formats behind `--data` specs.

A source exposes its pools ("train", and "val"/"test" where the data has them) as labels plus
a `load(indices)` that returns uint8 pixels (N, C, h, w). Subsets are chosen from the labels
first and only the chosen images are decoded, so a 60k-image dataset never has to sit in
memory at the training resolution.

    fashion-mnist[:DIR]   the Debian package's idx files (train 60k, test 10k), 1 channel
    cifar10:DIR / cifar100:DIR   torchvision's on-disk python pickles (read without running code)
    imagefolder:DIR       DIR/{train,val,test}/<class>/<image> (val/test optional), or DIR/<class>/<image>
    images:DIR            a flat folder of unlabelled images (active-learning pools)
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from subtune.errors import SubtuneError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPEC_HELP = "fashion-mnist, imagefolder:DIR, cifar10:DIR, cifar100:DIR or images:DIR"


@dataclass
class Pool:
    """One split as stored: labels for every image (-1: unlabelled) and a loader for pixels."""

    labels: np.ndarray  # int64 (N,)
    ids: list[str]  # where each image comes from, for people and for `select` picks
    load: Callable[[np.ndarray], torch.Tensor]  # indices -> uint8 (n, C, h, w)


@dataclass
class Source:
    spec: str
    classes: list[str]
    pools: dict[str, Pool] = field(default_factory=dict)
    resized_on_load: bool = False  # imagefolder decodes straight to the training size


def open_source(spec: str, image_size: tuple[int, int]) -> Source:
    kind, _, arg = spec.partition(":")
    if kind == "fashion-mnist":
        return _fashion_mnist(spec, arg or os.environ.get("SUBTUNE_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    if kind in ("cifar10", "cifar100") and arg:
        return _cifar(spec, Path(arg), kind)
    if kind == "imagefolder" and arg:
        return _imagefolder(spec, Path(arg), image_size)
    if kind == "images" and arg:
        return _flat_images(spec, Path(arg), image_size)
    raise SubtuneError(f"`data` {spec!r}: expected {SPEC_HELP}")


# --------------------------------------------------------------------------- Fashion-MNIST


def _fashion_mnist(spec: str, folder: str) -> Source:
    root = Path(folder)
    files = {split: (root / f"{stem}-images-idx3-ubyte.gz", root / f"{stem}-labels-idx1-ubyte.gz")
             for split, stem in (("train", "train"), ("test", "t10k"))}
    missing = [str(p) for pair in files.values() for p in pair if not p.is_file()]
    if missing:
        raise SubtuneError(f"Fashion-MNIST not found ({missing[0]} is missing): install it with "
                           "`apt-get install dataset-fashion-mnist`, or pass fashion-mnist:DIR with the four idx .gz files")
    source = Source(spec, list(FASHION_MNIST_CLASSES))
    for split, (images_path, labels_path) in files.items():
        images = _read_idx(images_path, 2051, 3)
        labels = _read_idx(labels_path, 2049, 1).astype(np.int64)
        if len(images) != len(labels) or labels.max(initial=0) >= 10:
            raise SubtuneError(f"{images_path}: {len(images)} images but {len(labels)} labels (or labels out "
                               "of range); the Fashion-MNIST files are damaged, reinstall the package")
        pixels = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 28, 28)
        source.pools[split] = Pool(labels, [f"{split}[{i}]" for i in range(len(labels))],
                                   lambda idx, px=pixels: px[torch.as_tensor(idx, dtype=torch.long)])
    return source


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise SubtuneError(f"{path}: not a readable gzip file ({e}); reinstall dataset-fashion-mnist") from e
    header = np.frombuffer(data[: 4 * (ndim + 1)], dtype=">i4")
    if len(header) != ndim + 1 or header[0] != magic:
        raise SubtuneError(f"{path}: not an idx file (bad header); reinstall dataset-fashion-mnist")
    shape = tuple(int(x) for x in header[1:])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 * (ndim + 1))
    if body.size != int(np.prod(shape)):
        raise SubtuneError(f"{path}: truncated ({body.size} bytes of pixels for shape {shape})")
    return body.reshape(shape).copy()


# --------------------------------------------------------------------------- CIFAR


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's files are pickles; allow only what numpy arrays need, so a hostile file cannot
    run code (the same guarantee torch.load(weights_only=True) gives for model files)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise SubtuneError(f"{path} not found: expected torchvision's CIFAR layout") from None
    except Exception as e:  # noqa: BLE001 - any failure means "not a CIFAR batch file"
        raise SubtuneError(f"{path}: not a CIFAR batch file ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise SubtuneError(f"{path}: not a CIFAR batch file (expected a dict)")
    return data


def _cifar(spec: str, root: Path, kind: str) -> Source:
    folder, train_files, test_files, meta_file, label_key, names_key = (
        ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
         "labels", "label_names") if kind == "cifar10" else
        ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"))
    base = root / folder if (root / folder).is_dir() else root
    if not (base / meta_file).is_file():
        raise SubtuneError(f"`data` {spec}: {base / meta_file} not found: expected torchvision's layout "
                           f"(DIR/{folder}/{meta_file}, as torchvision.datasets.{kind.upper()} downloads it)")
    classes = [str(c) for c in _unpickle(base / meta_file).get(names_key, [])]
    if not classes:
        raise SubtuneError(f"{base / meta_file}: no {names_key!r}; not a {kind} meta file")
    source = Source(spec, classes)
    for split, names in (("train", train_files), ("test", test_files)):
        arrays, labels = [], []
        for name in names:
            d = _unpickle(base / name)
            if "data" not in d or label_key not in d:
                raise SubtuneError(f"{base / name}: lacks 'data' or {label_key!r}; not a {kind} batch file")
            arrays.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(x) for x in d[label_key])
        pixels = torch.from_numpy(np.concatenate(arrays))
        lab = np.asarray(labels, dtype=np.int64)
        if len(lab) != len(pixels) or lab.min(initial=0) < 0 or lab.max(initial=0) >= len(classes):
            raise SubtuneError(f"{base}: {split} labels do not match the images or the {len(classes)} classes")
        source.pools[split] = Pool(lab, [f"{split}[{i}]" for i in range(len(lab))],
                                   lambda idx, px=pixels: px[torch.as_tensor(idx, dtype=torch.long)])
    return source


# --------------------------------------------------------------------------- image folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_folder(root: Path, spec: str, classes: list[str] | None = None) -> tuple[list[str], list[Path], np.ndarray]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise SubtuneError(f"`data` {spec}: {root} has no class folders: expected {root}/<class>/<image>")
    names = [d.name for d in dirs]
    if classes is not None:
        extra = sorted(set(names) - set(classes))
        if extra:
            raise SubtuneError(f"`data` {spec}: {root} has classes {extra[:5]} that the train folder lacks; "
                               "the splits must use the same class folders")
    classes = classes or names
    files, labels = [], []
    for d in dirs:
        found = _image_files(d)
        if not found:
            raise SubtuneError(f"`data` {spec}: class folder {d} has no images "
                               f"(expected {', '.join(sorted(IMAGE_EXTENSIONS))}); remove it or add images")
        files += found
        labels += [classes.index(d.name)] * len(found)
    return classes, files, np.asarray(labels, dtype=np.int64)


def _decoder(files: list[Path], root: Path, image_size: tuple[int, int]) -> Callable[[np.ndarray], torch.Tensor]:
    def load(indices: np.ndarray) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError
        from tqdm import tqdm
        import sys

        out = torch.empty(len(indices), 3, *image_size, dtype=torch.uint8)
        for j, i in enumerate(tqdm(indices, desc=f"decoding {root.name}", unit="img", file=sys.stderr,
                                   disable=len(indices) < 500 or not sys.stderr.isatty())):
            path = files[int(i)]
            try:
                with Image.open(path) as im:
                    im = im.convert("RGB").resize((image_size[1], image_size[0]), Image.BILINEAR)
                    out[j] = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
                raise SubtuneError(f"cannot read image {path} ({type(e).__name__}: {e}); remove or replace it") from e
        return out

    return load


def _imagefolder(spec: str, root: Path, image_size: tuple[int, int]) -> Source:
    if not root.is_dir():
        raise SubtuneError(f"`data` {spec}: folder {root} not found")
    split_dirs = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise SubtuneError(f"`data` {spec}: {root} has {sorted(split_dirs)} but no train/ folder")
    top = split_dirs.get("train", root)
    classes, files, labels = _class_folder(top, spec)
    source = Source(spec, classes, resized_on_load=True)
    source.pools["train"] = Pool(labels, [str(f.relative_to(root)) for f in files], _decoder(files, root, image_size))
    for split in ("val", "test"):
        if split in split_dirs:
            _, f2, l2 = _class_folder(split_dirs[split], spec, classes)
            source.pools[split] = Pool(l2, [str(f.relative_to(root)) for f in f2], _decoder(f2, root, image_size))
    return source


def _flat_images(spec: str, root: Path, image_size: tuple[int, int]) -> Source:
    if not root.is_dir():
        raise SubtuneError(f"`data` {spec}: folder {root} not found")
    files = _image_files(root)
    if not files:
        raise SubtuneError(f"`data` {spec}: {root} has no images (expected {', '.join(sorted(IMAGE_EXTENSIONS))})")
    pool = Pool(np.full(len(files), -1, dtype=np.int64), [f.name for f in files], _decoder(files, root, image_size))
    return Source(spec, [], {"train": pool}, resized_on_load=True)
