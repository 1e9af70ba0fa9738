"""Held-out check images: what a reduced graph is judged on, kept apart from what it was calibrated on.

Calibration draws from the data's training pool (calibration.py). The checks draw from its test
split, which no task trained on and calibration never saw, so an accuracy measured there is the
accuracy a user will see, not one flattered by memorised training images.

Labels per output (`CheckSet.labels`):
  - a task trained on the same data (its file's meta["data"]["train"]["spec"]) gets the test
    labels mapped as it was trained (its --label-map), so `coarse4` is scored on 4 coarse classes;
  - a task without that record gets the raw labels when its classes are the data's (by name, or
    by count when unnamed);
  - the base output, and tasks of other data, get no labels: they are judged by agreement with
    fp32 (compare.py).
Where the data has no test split, the checks fall back to the calibration images and the report
says they are not held out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from subtune.errors import SubtuneError

log = logging.getLogger(__name__)


@dataclass
class CheckSet:
    images: np.ndarray  # float32 (N, 3, H, W), preprocessed as the graph expects
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # output -> int64 (N,), -1: not that output's class
    source: str = "images given in code"
    held_out: bool = False  # disjoint from the calibration images and from the tasks' training data
    # graph outputs on these images, computed once per graph (compare.check_outputs)
    outputs: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.images = np.ascontiguousarray(self.images, dtype=np.float32)
        if self.images.ndim != 4 or self.images.shape[1] != 3 or len(self.images) == 0:
            raise SubtuneError(f"check images must be a non-empty float32 array [N, 3, H, W], "
                               f"found shape {tuple(self.images.shape)}")
        for name, labels in list(self.labels.items()):
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != (len(self.images),):
                raise SubtuneError(f"{len(self.images)} check images but labels for {name!r} of shape {labels.shape}")
            self.labels[name] = labels

    def to_json(self) -> dict:
        return {"source": self.source, "images": len(self.images), "held_out": self.held_out,
                "labelled_outputs": sorted(self.labels)}


def task_labels(tasks, labels: np.ndarray, classes: list[str], spec: str | None) -> dict[str, np.ndarray]:
    """Each task's labels for images labelled `labels` over `classes` (the module docstring's rules)."""
    from subtune.training.data import parse_label_map

    out = {}
    for t in tasks:
        if t.meta.get("synthetic"):
            continue
        trained = (t.meta.get("data") or {}).get("train") or {}
        if spec is not None and trained.get("spec") == spec:
            if trained.get("label_map"):
                lut, mapped, _ = parse_label_map(trained["label_map"], classes)
                if t.classes and list(mapped) != list(t.classes):
                    continue
                out[t.name] = lut[labels]
            elif not t.classes or list(t.classes) == list(classes):
                out[t.name] = labels.copy()
        elif t.classes == classes if t.classes else t.num_classes == len(classes):
            out[t.name] = labels.copy()
    return out


def load_check_set(spec: str, *, size: int, image_size: tuple[int, int], mean, std, tasks, calibration,
                   seed: int = 0) -> CheckSet:
    """`size` class-balanced images of the test split of `spec`; the calibration images (said so)
    where the data has none."""
    from subtune.training.data import load_dataset

    try:
        test = load_dataset(spec, "test", image_size=image_size, mean=mean, std=std, limit=size, seed=seed)
    except SubtuneError as e:
        if "no test split" not in str(e):
            raise SubtuneError(str(e).replace("--data ", "--calibration ", 1)) from e
        log.warning("%s has no test split: checking on the calibration images, which are not held out", spec)
        labels = (task_labels(tasks, calibration.labels, calibration.classes or [], spec)
                  if calibration.labels is not None else {})
        return CheckSet(calibration.images, labels, f"{calibration.source}; NOT held out: {spec} has no test split",
                        held_out=False)
    labels = test.labels.numpy()
    per_output = task_labels(tasks, labels, list(test.classes), spec) if test.labelled else {}
    return CheckSet(test.images.numpy(), per_output, f"{spec} test split ({len(test)} images, seed {seed})",
                    held_out=True)
