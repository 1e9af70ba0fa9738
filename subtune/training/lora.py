"""LoRA (Hu et al., 2021) on the blocks of a frozen base, with PEFT's adapters, merged for
deployment into an ordinary task delta.

Targets: every nn.Conv2d with groups == 1 and every nn.Linear inside the chosen blocks, except
the projections of nn.MultiheadAttention (its forward reads `out_proj.weight` directly, so a
wrapped out_proj would be silently bypassed). Depthwise convolutions (EfficientNet, MobileNet)
are left frozen: their weight is one k x k filter per channel, already smaller than any
low-rank factorisation of it. The blocks' BatchNorm layers stay in eval mode with their base
statistics, so the merged block differs from the base only by the low-rank updates
W + (alpha / r) * B @ A.

PEFT (`pip install peft`, the `lora` extra) injects the adapters (`inject_adapter_in_model`)
and merges them (`LoraLayer.merge`); merging replaces each wrapper by its base layer, so a
merged block has exactly the base block's structure and state_dict keys.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from subtune.errors import SubtuneError
from subtune.models import Backbone
from subtune.training.network import SubTuneNet


def _peft():
    try:
        import peft
        from peft.tuners.lora import LoraLayer
    except ImportError as e:
        raise SubtuneError("LoRA needs PEFT: pip install peft (or the subtune[lora] extra)") from e
    return peft, LoraLayer


def lora_targets(module: nn.Module) -> list[str]:
    """Qualified names of the layers LoRA adapts (see the module docstring)."""
    inside_mha = {id(m) for mha in module.modules() if isinstance(mha, nn.MultiheadAttention) for m in mha.modules()}
    return [name for name, m in module.named_modules()
            if id(m) not in inside_mha and ((isinstance(m, nn.Conv2d) and m.groups == 1) or isinstance(m, nn.Linear))]


def add_lora(module: nn.Module, rank: int, alpha: float, seed: int) -> list[str]:
    """Inject adapters into `module` in place (B = 0, so the output is unchanged until trained);
    freeze everything else. Returns the adapted layers' names."""
    if rank < 1:
        raise SubtuneError(f"`rank` must be at least 1, found {rank}")
    if alpha <= 0:
        raise SubtuneError(f"`alpha` must be positive, found {alpha}")
    peft, _ = _peft()
    targets = lora_targets(module)
    if not targets:
        raise SubtuneError("the chosen blocks have no convolution (groups 1) or linear layer for LoRA to adapt")
    module.requires_grad_(False)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # PEFT draws A from the global generator
        peft.inject_adapter_in_model(config, module)
    _, LoraLayer = _peft()
    adapted = [n for n, m in module.named_modules() if isinstance(m, LoraLayer)]
    if sorted(adapted) != sorted(targets):  # PEFT matches names by suffix: make sure it took exactly these
        raise RuntimeError(f"PEFT adapted {adapted[:4]}..., expected {targets[:4]}...")
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    return targets


@torch.no_grad()
def merge_lora(module: nn.Module) -> nn.Module:
    """A copy of `module` with every adapter merged into its layer's weight and the wrappers
    replaced by the plain layers."""
    _, LoraLayer = _peft()
    merged = copy.deepcopy(module)
    for name, m in list(merged.named_modules()):
        if isinstance(m, LoraLayer):
            m.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            parent = merged.get_submodule(parent_name) if parent_name else merged
            setattr(parent, child, m.get_base_layer())
    return merged.requires_grad_(False)


class LoRANet(SubTuneNet):
    """SubTuneNet whose tuned blocks are frozen copies carrying LoRA adapters (BatchNorm frozen
    too); trainable: the adapters and the head."""

    def __init__(self, backbone: Backbone, blocks: list[int], num_classes: int, *, rank: int, alpha: float,
                 seed: int = 0):
        super().__init__(backbone, blocks, num_classes, freeze_bn=True, seed=seed)
        self.rank, self.alpha = rank, alpha
        self.targets = add_lora(self.tuned, rank, alpha, seed)

    @property
    def adapter_params(self) -> int:
        return sum(p.numel() for n, p in self.tuned.named_parameters() if "lora_" in n)

    def merged_blocks(self) -> list[nn.Module]:
        return list(merge_lora(self.tuned).eval())

    def lora_meta(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "scaling": self.alpha / self.rank, "targets": self.targets,
                "adapter_params": self.adapter_params, "library": "peft", "bn": "frozen (base statistics)",
                "merged": True}
