"""Calibration: the images (the trainer's `--data` forms) and the tensor ranges measured on them.

Ranges come from ONNX Runtime's calibrators (min-max, entropy, percentile), fed one batch per
call so memory stays at one batch of intermediate tensors whatever the number of images. A graph
compiled with --task-select is calibrated with every task asked for on every image (its mask
input all true), so every task branch sees every calibration image.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from subtune.errors import SubtuneError

if TYPE_CHECKING:
    from subtune.delta import TaskDelta
    from subtune.quantization.heldout import CheckSet

METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_BATCH = 8  # images per calibrator run; bounds the memory of all intermediate tensors


@dataclass
class CalibrationSet:
    images: np.ndarray  # float32 (N, 3, H, W), preprocessed as the graph expects
    labels: np.ndarray | None = None  # int64 (N,), None when unlabelled
    classes: list[str] | None = None
    source: str = "images given in code"
    check: "CheckSet | None" = None  # held-out images to judge the reduced graph on (heldout.py)

    def __post_init__(self):
        self.images = np.ascontiguousarray(self.images, dtype=np.float32)
        if self.images.ndim != 4 or self.images.shape[1] != 3 or len(self.images) == 0:
            raise SubtuneError(f"calibration images must be a non-empty float32 array [N, 3, H, W], "
                               f"found shape {tuple(self.images.shape)}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.labels.shape != (len(self.images),):
                raise SubtuneError(f"{len(self.images)} calibration images but labels of shape {self.labels.shape}")
            if (self.labels < 0).any():  # an unlabelled pool
                self.labels = None


def load_calibration_set(spec: str, *, size: int, image_size: tuple[int, int], mean, std,
                         seed: int = 0) -> CalibrationSet:
    """`size` class-balanced images from the pool of `spec` (`subtune train --data` forms). Where
    the trainer's train split holds back a validation part of them, calibration takes both."""
    from subtune.training.data import load_dataset

    def split(name: str):
        try:
            return load_dataset(spec, name, image_size=image_size, mean=mean, std=std, limit=size, seed=seed)
        except SubtuneError as e:  # the loaders speak of the trainer's --data
            raise SubtuneError(str(e).replace("--data ", "--calibration ", 1)) from e

    parts = [split("train")]
    if parts[0].info.get("val_split") is not None:  # carved from the same `size` images: disjoint
        parts.append(split("val"))
    labelled = all(p.labelled for p in parts)
    return CalibrationSet(np.concatenate([p.images.numpy() for p in parts]),
                          np.concatenate([p.labels.numpy() for p in parts]) if labelled else None,
                          list(parts[0].classes) or None,
                          f"{spec} ({sum(len(p) for p in parts)} training images, seed {seed})")


def normalization(arch: str, model, tasks: list["TaskDelta"]) -> tuple[list[float], list[float]]:
    """The mean/std every task was trained with, else the architecture's pretrained normalisation."""
    found = {(tuple(p["mean"]), tuple(p["std"])) for t in tasks
             if isinstance(p := t.meta.get("preprocess"), dict) and "mean" in p and "std" in p}
    if len(found) > 1:
        raise SubtuneError(f"tasks were trained with different input normalisations {sorted(found)}: one graph takes "
                           "one preprocessing; calibrate and compile them separately")
    if found:
        mean, std = found.pop()
        return list(mean), list(std)
    from subtune.models import get_adapter

    return get_adapter(arch)[0].normalization(model)


def method_enum(method: str):
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise SubtuneError(f"calibration method {method!r}: expected one of {', '.join(METHODS)}")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def tensor_ranges(model: ir.Model, images: np.ndarray, method: str, *, symmetric: bool = True,
                  desc: str = "calibrating"):
    """ONNX Runtime's TensorsData for every tensor the quantiser may quantise, measured on `images`
    (symmetric: ranges centred on 0, for zero-point-0 activations)."""
    from onnxruntime.quantization import CalibrationDataReader, create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from tqdm import tqdm

    masks = {v.name: v.shape[1] for v in model.graph.inputs if v.dtype == ir.DataType.BOOL and v.shape is not None
             and len(v.shape) == 2 and isinstance(v.shape[1], int)}  # --task-select: ask for every task

    class OneBatch(CalibrationDataReader):
        def __init__(self, batch: np.ndarray):
            self.batch = batch

        def get_next(self):
            batch, self.batch = self.batch, None
            if batch is None:
                return None
            return {"images": batch, **{name: np.ones((len(batch), k), dtype=bool) for name, k in masks.items()}}

    from subtune.quantization.files import save, too_large

    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # what quantize_static would calibrate
    with tempfile.TemporaryDirectory(prefix="subtune-calib-") as tmp, quiet_onnxruntime_quantization():
        path = save(model, Path(tmp) / "model.onnx")
        calibrator = create_calibrator(path, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=method_enum(method), extra_options={"symmetric": symmetric},
                                       use_external_data_format=too_large(model))
        starts = range(0, len(images), CALIBRATION_BATCH)
        for start in tqdm(starts, desc=desc, unit="batch", file=sys.stderr, disable=not sys.stderr.isatty(),
                          leave=False):
            calibrator.collect_data(OneBatch(images[start:start + CALIBRATION_BATCH]))
        return calibrator.compute_data()


@contextlib.contextmanager
def quiet_onnxruntime_quantization():
    """ONNX Runtime's quantisation tools log advice (pre-processing, shape inference) on the root
    logger and print the histogram calibrators' progress; subtune reports what matters itself."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
