"""Parsers for the values flags take, shared by every command: one place words each error."""

from __future__ import annotations

import argparse

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


IMAGE_SIZE_HELP = "input images' size in pixels, H or H,W"


class Deprecated(argparse.Action):
    """An old spelling of a flag: it sets the new flag's destination and leaves a warning, which
    `subtune` prints on stderr before the command runs."""

    def __init__(self, option_strings, dest, *, use: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.use = use

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        warnings = [*getattr(namespace, "_deprecated", []), f"{option_string} is deprecated: use {self.use}"]
        setattr(namespace, "_deprecated", warnings)


def add_deprecated(p: argparse.ArgumentParser, old: str, use: str, dest: str, **kwargs) -> None:
    """`old` still works, hidden from --help, as `use` (its destination `dest`) with a warning."""
    p.add_argument(old, dest=dest, action=Deprecated, use=use, help=argparse.SUPPRESS, **kwargs)


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def given(args: argparse.Namespace, *dests: str) -> list[str]:
    """Those of `dests` the command line set (subtune.cli.main records them in args.given)."""
    found = getattr(args, "given", frozenset())
    return [d for d in dests if d in found]


def refuse_unless(args: argparse.Namespace, applies: bool, dests, why: str) -> None:
    """Flags that would do nothing are refused, not ignored: when not `applies`, any of `dests`
    given is an error; `why` completes "--x does nothing ..." (where it applies, what to do)."""
    if applies:
        return
    found = given(args, *dests)
    if found:
        names = " and ".join(flag(d) for d in found)
        raise SubtuneError(f"{names} {'does' if len(found) == 1 else 'do'} nothing {why}")
