"""A base model in memory: the architecture, its weights and their fingerprint (subtune.formats
reads and writes it as a file)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from subtune.errors import SubtuneError
from subtune.models.adapter import Backbone
from subtune.models.registry import build_model, get_adapter


def fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, shape, dtype and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")  # the buffer itself, no copy
    return h.hexdigest()


def diff_keys(expected: dict, found: dict) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(found)), sorted(set(found) - set(expected))


@dataclass
class BaseModel:
    """A loaded base file: the architecture, its weights, and the model built from them."""

    arch: str
    arch_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    fingerprint: str
    path: str | None = None

    def build(self) -> tuple[nn.Module, Backbone]:
        """A fresh eval-mode model with the base weights (each call builds a new copy)."""
        model, backbone = build_model(self.arch, self.arch_kwargs)
        model.load_state_dict(self.state_dict)
        return model, backbone

    @property
    def input_size(self) -> tuple[int, int]:
        adapter, _ = get_adapter(self.arch)
        return adapter.input_size(self.arch_kwargs)


def make_base(arch: str, arch_kwargs: dict[str, Any] | None = None, *, weights: dict | None = None,
              seed: int = 0) -> BaseModel:
    """A base model from random weights (seeded) or from a plain state_dict."""
    arch_kwargs = dict(arch_kwargs or {})
    torch.manual_seed(seed)
    model, _ = build_model(arch, arch_kwargs)
    if weights is not None:
        adapter, _ = get_adapter(arch)
        mapped = adapter.map_state_dict(weights, model)
        own = model.state_dict()
        for k, v in mapped.items():
            if k in own and tuple(own[k].shape) != tuple(v.shape):
                raise SubtuneError(
                    f"weights tensor {k!r} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}: "
                    "check --num-classes and the architecture")
        model.load_state_dict(mapped)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return BaseModel(arch, arch_kwargs, sd, fingerprint(sd))
