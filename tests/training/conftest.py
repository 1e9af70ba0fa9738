"""Tiny data and a tiny base for the trainer's tests: ResNet-18 with random weights (seeded) at
32px, an image folder written to a temporary directory, and a Fashion-MNIST subset."""

from __future__ import annotations

import os

import numpy as np
import pytest

from subtune.training.sources import FASHION_MNIST_DIR

SIZE = 32
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def write_image(path, colour, seed: int, size: int = 20, mode: str = "RGB") -> None:
    """A coloured square with seeded noise and a bright bar: easy classes, distinct images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    px = np.clip(np.array(colour)[None, None] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    px[rng.integers(0, size - 4): , rng.integers(0, size // 2)] = 255
    im = Image.fromarray(px)
    im.convert(mode).save(path)


def make_folder(root, counts: dict[str, int] | None = None) -> str:
    """root/<split>/<colour>/<i>.png for three colour classes (default 8 train, 4 val, 4 test each)."""
    counts = counts or {"train": 8, "val": 4, "test": 4}
    seed = 0
    for split, n in counts.items():
        for name, colour in COLOURS.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                seed += 1
                # one grayscale file: the reader must still give 3 channels
                write_image(d / f"{i}.png", colour, seed, mode="L" if (split, name, i) == ("train", "red", 0) else "RGB")
    return str(root)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a shared 2-core machine OpenMP's
    spinning threads slowed these tests down twenty-fold; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def folder(tmp_path_factory) -> str:
    return make_folder(tmp_path_factory.mktemp("imagefolder"))


@pytest.fixture(scope="session")
def base_path(tmp_path_factory) -> str:
    from subtune.formats import save_base
    from subtune.models import make_base

    path = tmp_path_factory.mktemp("base") / "r18.pt"
    save_base(path, make_base("torchvision:resnet18", seed=0))
    return str(path)


@pytest.fixture(scope="session")
def base(base_path):
    from subtune.formats import load_base

    return load_base(base_path)


@pytest.fixture(scope="session")
def splits(folder):
    from subtune.training.data import load_dataset

    kw = dict(image_size=SIZE, mean=[0.5] * 3, std=[0.25] * 3)
    return tuple(load_dataset(f"imagefolder:{folder}", s, **kw) for s in ("train", "val", "test"))


@pytest.fixture
def fashion_mnist():
    if not os.path.isfile(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")):
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    return "fashion-mnist"
