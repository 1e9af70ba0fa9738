"""A task delta in memory (TaskDelta): what a task changes of its base (subtune.formats reads and
writes it as a file; validate.py checks it against its base)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from subtune.errors import SubtuneError

TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
RESERVED_NAMES = {"base", "images"}
TASK_KINDS = ("delta", "tap")


@dataclass
class TaskDelta:
    """A task: new weights for blocks first..last (1-based, inclusive) and a new head (kind
    "delta": SubTuning, LoRA merged into its blocks, pruned tasks); or a head on the base's own
    activations with no blocks at all (kind "tap": Head2Toe, the linear probe), which the
    compiler attaches to the shared stream without forking it. `taps` (tap tasks only):

        {"points": [{"point": P, "grid": [gh, gw] or None, "dim": D}, ...],
         "select": LongTensor [k] or None}

    P numbers backbone points as the trainer does (1: the stem's output, k: block k's input,
    N + 1: the last block's output, N + 2: the features the classifier sees); a feature map is
    average-pooled to the grid and flattened channel-major (D = channels * gh * gw), a token
    sequence is averaged over its tokens (grid None), features are taken as they are. The
    pooled points are concatenated in order, `select` picks columns of that (ascending; None:
    all), and the head sees the result."""

    name: str
    base_fingerprint: str
    arch: str
    blocks: list[int]
    block_state: dict[str, dict[str, torch.Tensor]]
    head: dict[str, torch.Tensor]
    siamese: bool = False
    classes: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    taps: dict[str, Any] | None = None  # kind "tap" only (see above)

    @property
    def kind(self) -> str:
        return "tap" if self.taps is not None else "delta"

    @property
    def first(self) -> int | None:
        """The first tuned block; None for a tap task (it tunes none and never forks)."""
        return self.blocks[0] if self.blocks else None

    @property
    def last(self) -> int | None:
        return self.blocks[-1] if self.blocks else None

    @property
    def tap_points(self) -> list[int]:
        return [int(p["point"]) for p in self.taps["points"]] if self.taps is not None else []

    @property
    def num_classes(self) -> int:
        return int(self.head["weight"].shape[0])


def check_preprocess(meta: dict[str, Any], where: str) -> dict[str, Any] | None:
    """meta["preprocess"] as every consumer may rely on it, or None when the task has none:
    {"image_size": [H, W] (positive ints), "mean": [C floats], "std": [C positive floats],
    "channels": C (1 or 3; 3 when absent)}; other keys pass through."""
    pre = meta.get("preprocess")
    if pre is None:
        return None
    expected = ("expected {'image_size': [H, W], 'mean': [3 numbers], 'std': [3 positive numbers], "
                "'channels': 3}; retrain the task or fix its meta")

    def bad(problem: str) -> SubtuneError:
        return SubtuneError(f"{where}: meta['preprocess'] {problem}; {expected}")

    if not isinstance(pre, dict):
        raise bad(f"is a {type(pre).__name__}")
    missing = [k for k in ("image_size", "mean", "std") if k not in pre]
    if missing:
        raise bad(f"lacks {', '.join(map(repr, missing))}")
    size, channels = pre["image_size"], pre.get("channels", 3)
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in size)):
        raise bad(f"has image_size {size!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise bad(f"has channels {channels!r}")
    for key in ("mean", "std"):
        v = pre[key]
        if (not isinstance(v, (list, tuple)) or len(v) != channels
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x == x for x in v)):
            raise bad(f"has {key} {v!r} (for {channels} channels)")
    if not all(x > 0 for x in pre["std"]):
        raise bad(f"has std {pre['std']!r}, not all positive")
    return pre
