"""Parse a user's block selection (`13`, `13-14`, `13,14` or a stage name such as `layer3`), and
write one back (`block_span`)."""

from __future__ import annotations

from subtune.errors import SubtuneError
from subtune.models.adapter import Backbone


def parse_blocks(spec: str, backbone: Backbone) -> list[int]:
    spec = spec.strip()
    n = backbone.num_blocks
    if spec in backbone.stages:
        return list(backbone.stages[spec])
    try:
        if "-" in spec:
            lo, hi = (int(x) for x in spec.split("-", 1))
            blocks = list(range(lo, hi + 1))
        else:
            blocks = [int(x) for x in spec.split(",")]
    except ValueError:
        raise SubtuneError(f"blocks {spec!r}: expected FIRST-LAST (e.g. 13-14), a list (13,14) or a stage name "
                           f"({', '.join(backbone.stages)})") from None
    if not blocks or any(b < 1 or b > n for b in blocks):
        raise SubtuneError(f"blocks {spec!r} out of range: this model has blocks 1..{n}")
    if blocks != list(range(blocks[0], blocks[0] + len(blocks))):
        raise SubtuneError(f"blocks {spec!r} are not consecutive: SubTuning tunes one consecutive range")
    return blocks


def block_span(blocks) -> str:
    """[13, 14] -> "13-14"; [16] -> "16": how reports and tables name a window of blocks."""
    blocks = list(blocks)
    return f"{blocks[0]}-{blocks[-1]}" if len(blocks) > 1 else str(blocks[0])
