"""The architectures subtune knows: `family:name` -> the family's adapter.

The built-in families (torchvision, timm, subtune's tiny models) are imported on first use, since
they pull in torchvision and timm; `register` adds another family (tests register tiny ones).
The adapters themselves know nothing of this registry."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from subtune.errors import SubtuneError
from subtune.models.adapter import Adapter, Backbone

if TYPE_CHECKING:
    from torch import nn

_REGISTERED: dict[str, Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    """Add an architecture family (or replace a built-in one of the same family name)."""
    _REGISTERED[adapter.family] = adapter
    return adapter


@functools.cache
def _builtin() -> dict[str, Adapter]:
    from subtune.models.timm_models import TimmAdapter
    from subtune.models.tiny import TinyAdapter
    from subtune.models.torchvision_models import TorchvisionAdapter

    return {a.family: a for a in (TorchvisionAdapter(), TimmAdapter(), TinyAdapter())}


def _families() -> dict[str, Adapter]:
    return {**_builtin(), **_REGISTERED}


def known_architectures() -> list[str]:
    return sorted(f"{family}:{n}" for family, a in _families().items() for n in a.names())


def get_adapter(arch: str) -> tuple[Adapter, str]:
    """`'torchvision:resnet50'` -> (the torchvision adapter, 'resnet50')."""
    family, sep, name = arch.partition(":")
    adapter = _families().get(family)
    if not sep or adapter is None or name not in adapter.names():
        raise SubtuneError(
            f"unknown architecture {arch!r}: expected FAMILY:NAME, one of "
            f"{', '.join(known_architectures())}"
        )
    return adapter, name


def build_model(arch: str, arch_kwargs: dict[str, Any] | None = None) -> tuple["nn.Module", Backbone]:
    """Build an eval-mode model with random weights and split it into a Backbone."""
    adapter, name = get_adapter(arch)
    try:
        model = adapter.build(name, dict(arch_kwargs or {}))
    except TypeError as e:
        raise SubtuneError(f"cannot build {arch} with arguments {arch_kwargs}: {e}") from e
    model.eval()
    return model, adapter.split(model)
