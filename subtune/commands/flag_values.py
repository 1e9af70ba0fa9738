"""Parsers for the values flags take, shared by every command: one place words each error."""

from __future__ import annotations

from subtune.errors import SubtuneError


def int_list(text: str, flag: str, *, positive: bool = False, distinct: bool = False) -> list[int]:
    """`1,8,32` -> [1, 8, 32]; a one-line SubtuneError naming the flag otherwise."""
    kind = "positive integers" if positive else "integers"
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SubtuneError(f"{flag} expects comma-separated {kind} (e.g. 1,8), found {text!r}") from None
    if not values or (positive and min(values) < 1):
        raise SubtuneError(f"{flag} expects {kind} (e.g. 1,8), found {text!r}")
    if distinct and len(set(values)) != len(values):
        raise SubtuneError(f"{flag} expects distinct integers, found {text!r}")
    return values


def image_size(text: str | None, flag: str = "--image-size") -> tuple[int, int] | None:
    """`H` or `H,W` -> (H, W); None stays None (the default size)."""
    if not text:
        return None
    values = int_list(text, flag, positive=True)
    if len(values) not in (1, 2):
        raise SubtuneError(f"{flag} expects H or H,W, found {text!r}")
    return (values[0], values[-1])
