"""The trainable networks: SubTuning (some blocks + a head), the linear probe, full finetuning.

Every network names its *cut*: the point of the frozen backbone whose activations it takes as
input. Points are numbered along the backbone:

    0        the images (the stem runs first)
    k        the input of block k (1-based), so 1 is the stem's output
    N + 1    the output of the last block
    N + 2    the features the classifier sees (after the neck)

Everything before the cut is frozen and can be computed once and cached (paper §3.2); the
network's `forward_from(h)` runs the rest.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from subtune.delta.modules import task_blocks, task_head
from subtune.delta.standalone import TapTaskNet, TaskNet, features_point, run_base  # noqa: F401 (features_point: re-exported for training)
from subtune.delta import TaskDelta
from subtune.models import Backbone, BaseModel, build_model


@torch.no_grad()
def run_frozen(backbone: Backbone, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Carry activations at point `start` to point `stop` through the frozen base
    (delta.standalone.run_base without autograd)."""
    return run_base(backbone, x, start, stop)


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """Feature maps in channels-last order, which CPU convolutions and BatchNorm run 1.4-1.8x
    faster on (measured on EfficientNet-Lite0 blocks); token sequences (ViT) as they are."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def freeze(backbone: Backbone) -> Backbone:
    """Frozen means eval mode (BatchNorm uses its stored statistics) and no gradients."""
    backbone.model.eval()
    backbone.model.requires_grad_(False)
    return backbone


def new_head(in_features: int, num_classes: int, seed: int) -> nn.Linear:
    """nn.Linear's default initialisation, drawn from its own seeded generator."""
    head = nn.Linear(in_features, num_classes)
    g = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(in_features)
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=g)
        head.bias.uniform_(-bound, bound, generator=g)
    return head


class SubTuneNet(TaskNet):
    """The frozen base with blocks first..last trainable and a new linear head; `blocks=[]` is
    the linear probe (cut at the features). Its forward is the task's own model
    (delta.standalone.TaskNet); what this class adds is for training.

    The backbone is shared between networks and is not a submodule: `net.train()` switches only
    the tuned blocks to training mode; frozen layers keep their BatchNorm statistics. With
    `freeze_bn` the tuned blocks' BatchNorm layers stay in eval mode too (affine terms still
    train). Siamese: the head sees [base features, tuned features] (paper §5.1)."""

    def __init__(self, backbone: Backbone, blocks: list[int], num_classes: int, *, siamese: bool = False,
                 freeze_bn: bool = False, seed: int = 0, tuned: nn.ModuleList | None = None,
                 head: nn.Linear | None = None):
        """`tuned`, `head`: given modules (a task file's) in place of trainable copies of the base
        blocks and a new seeded head."""
        if tuned is None:
            tuned = nn.ModuleList(copy.deepcopy(backbone.blocks[b - 1]).requires_grad_(True) for b in blocks)
        if head is None:
            head = new_head(backbone.feature_dim * (2 if siamese else 1), num_classes, seed)
        super().__init__(backbone, blocks[0] if blocks else None, tuned, head, siamese=siamese)
        self.blocks = list(blocks)
        self.freeze_bn = freeze_bn

    def train(self, mode: bool = True) -> "SubTuneNet":
        super().train(mode)
        if self.freeze_bn:
            for m in self.tuned.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    @torch.no_grad()
    def run_base(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The frozen base, without autograd."""
        return run_base(self.backbone, x, start, stop)

    @classmethod
    def from_task(cls, backbone: Backbone, task: TaskDelta) -> "SubTuneNet | TapTaskNet":
        """The network a task file describes (pruned blocks at their pruned size); a tap task
        (Head2Toe, linear probe) gives a TapTaskNet, which reads images (cut 0)."""
        if task.taps is not None:
            return TapTaskNet.from_task(backbone, task)
        return cls(backbone, task.blocks, task.num_classes, siamese=task.siamese, tuned=task_blocks(task, backbone),
                   head=task_head(task)).eval()


class FullNet(nn.Module):
    """Full finetuning: a fresh copy of the base with a new classifier, everything trainable
    and in training mode (BatchNorm and dropout as in ordinary finetuning)."""

    siamese = False
    cut = 0

    def __init__(self, base: BaseModel, num_classes: int, *, seed: int = 0):
        super().__init__()
        self.arch_kwargs = {**base.arch_kwargs, "num_classes": num_classes}
        model, backbone = build_model(base.arch, self.arch_kwargs)
        own = model.state_dict()
        cls_names = {f"{n}" for n, _ in _classifier_params(model, backbone)}
        model.load_state_dict({k: v for k, v in base.state_dict.items() if k not in cls_names}, strict=False)
        head = new_head(backbone.feature_dim, num_classes, seed)
        backbone.classifier.load_state_dict(head.state_dict())
        missing = [k for k in own if k not in base.state_dict and k not in cls_names]
        if missing:
            raise RuntimeError(f"base weights lack {missing[:3]}")  # a bug: the base file was validated
        self.model = model.requires_grad_(True)
        self.backbone = backbone  # the same modules as self.model

    def forward_from(self, images: torch.Tensor, base_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(images)

    forward = forward_from


def _classifier_params(model: nn.Module, backbone: Backbone) -> list[tuple[str, torch.Tensor]]:
    ids = {id(p) for p in backbone.classifier.parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]
