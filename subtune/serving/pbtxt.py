"""Protobuf text format (what Triton's config.pbtxt is) from plain Python values.

A dict is a message, a list is a repeated field, a str is quoted, a bool/int/float is a scalar and
an `Enum` is written bare (KIND_CPU, TYPE_FP32). Map fields are lists of {"key": …, "value": …}."""

from __future__ import annotations

import json


class Enum(str):
    """An enum value: written without quotes."""


def dumps(message: dict, indent: int = 0) -> str:
    lines: list[str] = []
    _message(message, indent, lines)
    return "\n".join(lines) + "\n"


def _message(message: dict, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    for key, value in message.items():
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                lines.append(f"{pad}{key} {{")
                _message(item, indent + 1, lines)
                lines.append(f"{pad}}}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string literal is a valid protobuf text string (escapes included)
    raise TypeError(f"cannot write {type(value).__name__} in protobuf text")
