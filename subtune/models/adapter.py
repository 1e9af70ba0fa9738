"""The adapter interface: what an architecture family tells subtune about its models
(subtune.models.registry maps `family:name` strings to adapters)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from subtune.errors import SubtuneError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("subtune")


@dataclass
class Backbone:
    """A model cut into the parts SubTuning needs. The parts are the model's own modules (no
    copies), so running stem -> blocks -> neck -> classifier equals the model's forward."""

    model: "nn.Module"
    stem: "nn.Module"
    blocks: list["nn.Module"]
    neck: "nn.Module"  # last block's output -> the features the classifier sees
    classifier: "nn.Linear"
    block_names: list[str] = field(default_factory=list)  # qualified names, e.g. "layer3.5"
    stages: dict[str, list[int]] = field(default_factory=dict)  # stage name -> 1-based blocks

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def feature_dim(self) -> int:
        return self.classifier.in_features


class Adapter:
    """One architecture family. Adding an architecture means subclassing this once."""

    family: str = ""

    def names(self) -> list[str]:
        raise NotImplementedError

    def build(self, name: str, arch_kwargs: dict[str, Any]) -> "nn.Module":
        raise NotImplementedError

    def split(self, model: "nn.Module") -> Backbone:
        raise NotImplementedError

    def input_size(self, arch_kwargs: dict[str, Any]) -> tuple[int, int]:
        """The image size (H, W) the model is exported and verified at by default."""
        return (224, 224)

    def normalization(self, model: "nn.Module") -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the preprocessing the pretrained weights expect."""
        return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

    def map_state_dict(self, state_dict: dict, model: "nn.Module") -> dict:
        """Rename a foreign state_dict to this model's names. The default accepts the model's
        own names, or the same tensors in the same order under other names (as in ports of the
        same network from another codebase), and refuses anything else.

        Mapping by position is logged (warning), and refused where shapes cannot tell tensors of
        one module apart and the names do not either: BatchNorm's four [C] tensors, say, stored
        in another order under names that do not say which is which."""
        own = model.state_dict()
        if set(state_dict) == set(own):
            return dict(state_dict)
        if len(state_dict) == len(own) and all(
            tuple(a.shape) == tuple(b.shape) for a, b in zip(state_dict.values(), own.values())
        ):
            pairs = list(zip(own, state_dict))
            ambiguous = [(o, f) for o, f in pairs if _shares_shape_in_module(o, own) and _role(f) != _role(o)]
            if ambiguous:
                o, f = ambiguous[0]
                raise SubtuneError(
                    f"weights have other names than {type(model).__name__}'s, and mapping them by position is "
                    f"ambiguous: {f!r} would become {o!r}, but {o.rsplit('.', 1)[0]!r} has several tensors of shape "
                    f"{list(own[o].shape)} and the names do not say which is which ({len(ambiguous)} such); save "
                    "the weights with this architecture's own names")
            renamed = [(o, f) for o, f in pairs if o != f]
            log.warning("weights mapped to %s by position: %d of %d tensors have other names (e.g. %r -> %r); "
                        "shapes match, and tensors of equal shape in one module were matched by name",
                        type(model).__name__, len(renamed), len(pairs), renamed[0][1], renamed[0][0])
            return {k: v for k, v in zip(own, state_dict.values())}
        missing = sorted(set(own) - set(state_dict))[:3]
        raise SubtuneError(
            f"weights do not fit this architecture: expected {len(own)} tensors named like "
            f"{list(own)[:2]}, found {len(state_dict)} (e.g. missing {missing}); pass weights "
            "saved from the same architecture"
        )


# Last name parts that mean the same tensor in other codebases (TensorFlow/Keras, Flax ports).
_ROLE_SYNONYMS = {"gamma": "weight", "scale": "weight", "kernel": "weight", "beta": "bias",
                  "moving_mean": "running_mean", "moving_variance": "running_var", "moving_var": "running_var",
                  "mean": "running_mean", "var": "running_var", "variance": "running_var"}


def _role(name: str) -> str:
    last = name.rsplit(".", 1)[-1].rsplit("/", 1)[-1].lower().split(":")[0]
    return _ROLE_SYNONYMS.get(last, last)


def _shares_shape_in_module(name: str, own: dict) -> bool:
    """Whether another tensor of the same module (same name prefix) has this tensor's shape."""
    prefix, shape = name.rsplit(".", 1)[0] if "." in name else "", tuple(own[name].shape)
    return any(k != name and (k.rsplit(".", 1)[0] if "." in k else "") == prefix and tuple(v.shape) == shape
               for k, v in own.items())
