"""Recovery training after pruning, and accuracy, on cached activations.

The paper prunes and then trains. Only the pruned blocks and the head train, with the trainer's
loop (subtune.training: AdamW, cosine schedule, the paper's Appendix A defaults); everything else
is frozen and in eval mode. The frozen prefix runs once over the data (`CachedData`, the paper's
§3.2 cached activations), so every sweep point reuses it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from subtune.errors import SubtuneError
from subtune.delta import TaskDelta, validate_task
from subtune.models import Backbone, BaseModel


class CachedData:
    """Labelled images, kept as the activations entering block `first` (and, for a Siamese task,
    the base model's features). `backbone` must be frozen (subtune.training.network.freeze)."""

    def __init__(self, backbone: Backbone, first: int, images: torch.Tensor, labels: torch.Tensor, *,
                 siamese: bool = False, batch_size: int = 256):
        from subtune.training.network import features_point, run_frozen

        if len(images) != len(labels) or len(images) == 0:
            raise SubtuneError(f"expected as many labels as images (and at least one), found {len(images)} images "
                               f"and {len(labels)} labels")
        self.first, self.labels = first, labels.long()
        acts, feats = [], []
        for lo in range(0, len(images), batch_size):
            h = run_frozen(backbone, images[lo:lo + batch_size], 0, first)
            acts.append(h)
            if siamese:
                feats.append(run_frozen(backbone, h, first, features_point(backbone)))
        self.activations = torch.cat(acts)
        self.base_features = torch.cat(feats) if siamese else None

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, idx: np.ndarray, g: torch.Generator | None = None):
        """The trainer's `Inputs`: what the trainable part sees for a batch."""
        return self.activations[idx], None if self.base_features is None else self.base_features[idx]


def task_net(task: TaskDelta, backbone: Backbone):
    """The trainer's SubTuneNet carrying this task's (possibly pruned) blocks and head."""
    from subtune.training.network import SubTuneNet

    net = SubTuneNet.from_task(backbone, task)  # blocks rebuilt smaller where pruned
    net.tuned.requires_grad_(True)
    return net.eval()


def _check(task: TaskDelta, data: CachedData) -> None:
    if data.first != task.first or (task.siamese and data.base_features is None):
        raise SubtuneError(f"internal: data cached for block {data.first} does not suit task {task.name!r}")
    top = int(data.labels.max())
    if top >= task.num_classes:
        raise SubtuneError(f"the data has label {top}, task {task.name!r} has {task.num_classes} classes: "
                           "use the data the task was trained on")


def accuracy(task: TaskDelta, backbone: Backbone, data: CachedData, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of `task` (pruned or not) on cached data."""
    from subtune.training.trainer import accuracy as top1, predict

    _check(task, data)
    return top1(predict(task_net(task, backbone), data.inputs, len(data), batch_size), data.labels)


def recover(task: TaskDelta, base: BaseModel, backbone: Backbone, data: CachedData, config=None) -> TaskDelta:
    """Train the task's (pruned) blocks and head on cached data (`config`: a trainer TrainConfig)."""
    from subtune.training.trainer import TrainConfig, fit

    _check(task, data)
    config = config or TrainConfig()
    net = task_net(task, backbone)
    history = fit(net, data.inputs, data.labels, config, config.seed, f"recovery training {task.name}")
    state = {str(b): {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}
             for b, m in zip(task.blocks, net.tuned)}
    head = {k: v.detach().clone().contiguous() for k, v in net.head.state_dict().items()}
    meta = {**task.meta, "recovery": {**config.to_meta(), "examples": len(data), "history": history}}
    trained = replace(task, block_state=state, head=head, meta=meta, path=None)
    validate_task(trained, base, backbone)
    return trained


def load_task_data(task: TaskDelta, base: BaseModel, spec: str, split: str, *, limit: int | None = None,
                   seed: int = 0, label_map: str | None = None):
    """(images, labels) of one split via the trainer's data API, preprocessed as the task was
    trained (its meta["preprocess"], else the base's input size and normalisation)."""
    from subtune.models import get_adapter
    from subtune.training.data import load_dataset

    pre = task.meta.get("preprocess") or {}
    if pre:
        size, mean, std = tuple(pre["image_size"]), pre["mean"], pre["std"]
    else:
        model, _ = base.build()
        size, (mean, std) = base.input_size, get_adapter(base.arch)[0].normalization(model)
    data = load_dataset(spec, split, image_size=size, mean=mean, std=std, limit=limit, seed=seed, label_map=label_map)
    if len(data.classes) != task.num_classes or (task.classes is not None and list(data.classes) != list(task.classes)):
        raise SubtuneError(f"{spec} ({split}) has classes {list(data.classes)[:5]}, task {task.name!r} has "
                           f"{task.classes[:5] if task.classes else task.num_classes}: use the data (and `label_map`) "
                           "the task was trained on")
    return data.images, data.labels
