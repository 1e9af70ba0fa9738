"""A task delta from trained modules: what the trainer calls when a task is done."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from subtune.delta.task import TaskDelta
from subtune.delta.validate import validate_task
from subtune.models import BaseModel


def make_task(base: BaseModel, name: str, blocks: list[int], block_modules: list[nn.Module], head: nn.Linear,
              *, siamese: bool = False, classes: list[str] | None = None,
              meta: dict[str, Any] | None = None) -> TaskDelta:
    """A task delta from trained modules (the Python API the trainer uses)."""
    state = {str(b): {k: v.detach().cpu().clone().contiguous() for k, v in m.state_dict().items()}
             for b, m in zip(blocks, block_modules, strict=True)}
    head_sd = {"weight": head.weight.detach().cpu().clone().contiguous(),
               "bias": (head.bias.detach().cpu().clone() if head.bias is not None
                        else torch.zeros(head.out_features))}
    task = TaskDelta(name, base.fingerprint, base.arch, list(blocks), state, head_sd, siamese, classes, dict(meta or {}))
    validate_task(task, base)
    return task


def make_tap_task(base: BaseModel, name: str, points: list[dict[str, Any]], head: nn.Linear, *,
                  select: torch.Tensor | None = None, classes: list[str] | None = None,
                  meta: dict[str, Any] | None = None, input_size: tuple[int, int] | None = None) -> TaskDelta:
    """A tap task (Head2Toe, the linear probe): `points` as in TaskDelta's docstring."""
    taps = {"points": [{"point": int(p["point"]), "grid": None if p.get("grid") is None else [int(g) for g in p["grid"]],
                        "dim": int(p["dim"])} for p in points],
            "select": None if select is None else select.detach().cpu().to(torch.int64).clone().contiguous()}
    head_sd = {"weight": head.weight.detach().cpu().clone().contiguous(),
               "bias": (head.bias.detach().cpu().clone() if head.bias is not None else torch.zeros(head.out_features))}
    task = TaskDelta(name, base.fingerprint, base.arch, [], {}, head_sd, False, classes, dict(meta or {}), taps=taps)
    validate_task(task, base, input_size=input_size)
    return task
