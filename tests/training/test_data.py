"""load_dataset: splits, balanced subsets, preprocessing, label maps, and bad data."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from subtune.errors import SubtuneError
from subtune.training import data as data_mod
from subtune.training.data import load_dataset, parse_label_map
from subtune.training.sources import FASHION_MNIST_CLASSES

from .conftest import SIZE, make_folder, write_image

KW = dict(image_size=SIZE, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])


def test_fashion_mnist_subset_is_balanced_seeded_and_disjoint(fashion_mnist):
    train = load_dataset(fashion_mnist, "train", limit=125, val_split=0.2, **KW)
    val = load_dataset(fashion_mnist, "val", limit=125, val_split=0.2, **KW)
    test = load_dataset(fashion_mnist, "test", limit=50, **KW)
    assert (len(train), len(val), len(test)) == (100, 25, 50)
    assert train.classes == FASHION_MNIST_CLASSES
    assert train.labels.bincount().tolist() == [10] * 10 and test.labels.bincount().tolist() == [5] * 10
    assert not set(train.ids) & set(val.ids)
    assert all(i.startswith("test[") for i in test.ids)
    again = load_dataset(fashion_mnist, "train", limit=125, val_split=0.2, **KW)
    other = load_dataset(fashion_mnist, "train", limit=125, val_split=0.2, seed=1, **KW)
    assert again.ids == train.ids and other.ids != train.ids
    x = train.images
    assert x.shape == (100, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grayscale -> 3 equal channels
    assert float(x.min()) == pytest.approx(-2.0)  # black pixels: (0 - 0.5) / 0.25
    assert train.preprocess() == {"image_size": [SIZE, SIZE], "mean": [0.5] * 3, "std": [0.25] * 3, "channels": 3}
    pool = load_dataset(fashion_mnist, "pool", limit=125, **KW)
    assert len(pool) == 125 and set(train.ids) | set(val.ids) == set(pool.ids)


def test_label_map_coarse_classes(fashion_mnist):
    spec = "tops=0,2,4,6;bottoms=Trouser,3;footwear=5,7,9;bags=8"
    ds = load_dataset(fashion_mnist, "test", limit=40, label_map=spec, **KW)
    assert ds.classes == ["tops", "bottoms", "footwear", "bags"]
    assert ds.labels.bincount().tolist() == [10, 10, 10, 10]
    full = load_dataset(fashion_mnist, "test", **KW)
    fine = {i: int(full.labels[int(i[5:-1])]) for i in ds.ids}  # "test[123]" -> its original label
    groups = {0: {0, 2, 4, 6}, 1: {1, 3}, 2: {5, 7, 9}, 3: {8}}
    assert all(fine[i] in groups[int(c)] for i, c in zip(ds.ids, ds.labels))


def test_parse_label_map_forms_and_errors(tmp_path):
    classes = ["a", "b", "c", "d"]
    lut, names, dropped = parse_label_map("x=0,b;y=c", classes)
    assert lut.tolist() == [0, 0, 1, -1] and names == ["x", "y"] and dropped == ["d"]
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"x": ["a", 1], "y": [2, 3]}))
    assert parse_label_map(str(path), classes)[0].tolist() == [0, 0, 1, 1]
    for bad, message in [("x=0;y=0", "two groups"), ("x=9", "unknown class"), ("x", "expected NEW=OLD"),
                         ("", "at least one group")]:
        with pytest.raises(SubtuneError, match=message):
            parse_label_map(bad, classes)


def test_imagefolder_splits_and_grayscale(splits, folder):
    train, val, test = splits
    assert train.classes == ["blue", "green", "red"] and (len(train), len(val), len(test)) == (24, 12, 12)
    assert train.info["source_split"] == "train" and val.info["source_split"] == "val"
    gray = train.ids.index(os.path.join("train", "red", "0.png"))
    img = train.images[gray]
    assert img.shape == (3, SIZE, SIZE) and torch.equal(img[0], img[1])


def test_imagefolder_without_splits_uses_val_split(tmp_path):
    make_folder(tmp_path, counts={"all": 10})
    root = tmp_path / "all"
    train = load_dataset(f"imagefolder:{root}", "train", val_split=0.3, **KW)
    val = load_dataset(f"imagefolder:{root}", "val", val_split=0.3, **KW)
    assert (len(train), len(val)) == (21, 9) and not set(train.ids) & set(val.ids)
    with pytest.raises(SubtuneError, match="no test split"):
        load_dataset(f"imagefolder:{root}", "test", **KW)


def test_bad_image_folders(tmp_path):
    with pytest.raises(SubtuneError, match="not found"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}", "train", **KW)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SubtuneError, match="no class folders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}", "train", **KW)
    root = tmp_path / "d"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    write_image(root / "cat" / "1.png", (1, 2, 3), 0)
    with pytest.raises(SubtuneError, match="dog has no images"):
        load_dataset(f"imagefolder:{root}", "train", **KW)
    (root / "dog" / "1.jpg").write_bytes(b"not really a jpeg")
    with pytest.raises(SubtuneError, match=r"cannot read image .*1\.jpg"):
        load_dataset(f"imagefolder:{root}", "train", val_split=0.5, **KW)
    other = make_folder(tmp_path / "mismatch", counts={"train": 2, "val": 2})
    (tmp_path / "mismatch" / "val" / "purple").mkdir()
    write_image(tmp_path / "mismatch" / "val" / "purple" / "1.png", (1, 2, 3), 0)
    with pytest.raises(SubtuneError, match="purple"):
        load_dataset(f"imagefolder:{other}", "val", **KW)


def test_bad_specs_and_arguments(tmp_path, monkeypatch):
    with pytest.raises(SubtuneError, match="expected fashion-mnist"):
        load_dataset("mnist", "train", **KW)
    with pytest.raises(SubtuneError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(f"fashion-mnist:{tmp_path}", "train", **KW)
    with pytest.raises(SubtuneError, match="split 'dev'"):
        load_dataset("fashion-mnist", "dev", **KW)
    with pytest.raises(SubtuneError, match="`val_split`"):
        load_dataset("fashion-mnist", "train", val_split=1.5, **KW)


def test_images_property_refuses_huge_tensors(splits, monkeypatch):
    train = splits[0].subset(range(4))
    monkeypatch.setattr(data_mod, "MAX_MATERIALISE_BYTES", 100)
    with pytest.raises(SubtuneError, match=r"\.batches\(\)"):
        train.images
    assert next(train.batches(2))[0].shape == (2, 3, SIZE, SIZE)


def _write_cifar(root, n=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
    return folder


def test_cifar100_on_disk_format(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f, protocol=2)
    for name, n in (("train", 8), ("test", 4)):
        d = {"data": np.zeros((n, 3072), dtype=np.uint8), "fine_labels": list(range(n))}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
    test = load_dataset(f"cifar100:{tmp_path}", "test", **KW)
    assert len(test) == 4 and test.classes[:2] == ["c0", "c1"] and test.labels.tolist() == [0, 1, 2, 3]
    with pytest.raises(SubtuneError, match="not found"):
        load_dataset(f"cifar10:{tmp_path}", "test", **KW)


def test_cifar10_on_disk_format(tmp_path):
    folder = _write_cifar(tmp_path)
    train = load_dataset(f"cifar10:{tmp_path}", "pool", **KW)
    test = load_dataset(f"cifar10:{tmp_path}", "test", **KW)
    assert (len(train), len(test)) == (30, 6) and train.classes[0] == "airplane"
    raw = pickle.load(open(folder / "test_batch", "rb"))["data"][0].reshape(3, 32, 32)
    assert torch.allclose(test.images[0], (torch.from_numpy(raw).float() / 255 - 0.5) / 0.25, atol=1e-5)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/subtune-pwned",))


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = _write_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": _Evil(), "labels": []}, f, protocol=2)
    with pytest.raises(SubtuneError, match="refusing to load"):
        load_dataset(f"cifar10:{tmp_path}", "test", **KW)
    assert not os.path.exists("/tmp/subtune-pwned")
