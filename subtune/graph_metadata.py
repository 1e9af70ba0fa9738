"""The compiled graph's metadata: one definition (graph_metadata.schema.json, beside this file) of
every `subtune.*` key a compiled ONNX graph carries, with its type, and the one reader and writer
of it in Python.

    encode(values)          key -> value  =>  key -> the string stored in ONNX metadata_props
                            (checked against the definition; the compiler writes through it)
    decode(props, where)    metadata_props  =>  key -> value, refusing in one line a graph from a
                            newer schema, one that lacks a required key, or a value of the wrong type

Every reader holds itself to the same file: subtune.serving and subtune.inspection call `decode`;
the Triton python-backend model runs in a server environment without subtune, so `subtune
triton-repo` copies this module and the JSON beside it (this module imports nothing of subtune for
that reason); the C++ library embeds the JSON at build time (cpp/CMakeLists.txt) and checks the
same rules. The definition's `description` states the rules for versions and unknown keys.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Mapping

SCHEMA_FILE = Path(__file__).with_name("graph_metadata.schema.json")
PREFIX = "subtune."


class GraphMetadataError(ValueError):
    """A graph's metadata does not follow the definition (one line: what, where, what to do)."""


@functools.cache
def definition(path: str | None = None) -> dict[str, Any]:
    """The definition (graph_metadata.schema.json), parsed once."""
    return json.loads(Path(path or SCHEMA_FILE).read_text())


def schema_version() -> int:
    return int(definition()["schema_version"])


def version_key() -> str:
    return str(definition()["version_key"])


def keys() -> dict[str, dict[str, Any]]:
    return definition()["keys"]


def required_keys() -> list[str]:
    return [k for k, spec in keys().items() if spec.get("required")]


def lowest_version(values: Mapping[str, Any]) -> int:
    """The lowest schema version that describes a graph holding these keys: the largest `since` of
    them (1 when none says), so a graph that uses nothing new stays readable by older readers."""
    return max([int(keys()[k].get("since", 1)) for k in values if k in keys()] + [1])


# --------------------------------------------------------------------------- writing


def encode(values: Mapping[str, Any], *, complete: bool = False) -> dict[str, str]:
    """The strings to store for `values` (strings as they are, anything else as canonical JSON),
    each checked against its definition. `complete`: `values` is the whole set, so every required
    key must be there (the schema version is added when absent: the lowest that describes them). Raises GraphMetadataError for a
    `subtune.*` key the definition lacks: a new key is declared in graph_metadata.schema.json first."""
    values = dict(values)
    if complete:
        values.setdefault(version_key(), lowest_version(values))
        missing = [k for k in required_keys() if k not in values]
        if missing:
            raise GraphMetadataError(f"graph metadata lacks required key(s) {', '.join(missing)}")
    out = {}
    for key, value in values.items():
        if key.startswith(PREFIX):
            spec = keys().get(key)
            if spec is None:
                raise GraphMetadataError(f"metadata key {key!r} is not in {SCHEMA_FILE.name}: declare it there "
                                         "(with its type) before writing it")
            problem = check(value, spec["schema"], key)
            if problem:
                raise GraphMetadataError(f"metadata {problem}")
        out[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out


# --------------------------------------------------------------------------- reading


def decode(props: Mapping[str, str], where: str = "the graph") -> dict[str, Any]:
    """The graph's `subtune.*` metadata as values, checked: a newer schema, a missing required key,
    a key from a later schema than the graph's stamp or a value of the wrong type raise
    GraphMetadataError naming `where`. Keys this definition
    does not know are kept as decoded JSON (or the raw string) without a check."""
    found = {k: v for k, v in props.items() if k.startswith(PREFIX)}
    if not found:
        raise GraphMetadataError(f"{where}: not a subtune graph (its ONNX metadata has no subtune.* keys); "
                                 "compile one with subtune-compile base.pt task.pt ... -o model.onnx")
    out: dict[str, Any] = {}
    for key, raw in found.items():
        spec = keys().get(key)
        if spec is not None and _type_of(spec["schema"]) == {"string"}:
            out[key] = raw
            continue
        try:
            out[key] = json.loads(raw)
        except ValueError:
            if spec is not None:
                raise GraphMetadataError(f"{where}: metadata {key} is not valid JSON ({raw[:60]!r}); "
                                         "compile the graph again") from None
            out[key] = raw
    version = out.get(version_key(), 1)  # graphs from before the key existed have version 1's layout
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise GraphMetadataError(f"{where}: metadata {version_key()} is {version!r}, expected a positive integer; "
                                 "compile the graph again")
    if version > schema_version():
        raise GraphMetadataError(f"{where}: the graph's metadata follows schema {version}, this reader knows "
                                 f"schema {schema_version()} at most; upgrade subtune (or compile the graph with "
                                 "this version)")
    out.setdefault(version_key(), version)
    missing = [k for k in required_keys() if k not in out]
    if missing:
        raise GraphMetadataError(f"{where}: the graph's metadata lacks {', '.join(missing)}, which every subtune "
                                 "graph records; compile it again with subtune-compile")
    for key in sorted(out):  # a key newer than the graph's stamp: a reader of that schema would misread the graph
        since = int(keys().get(key, {}).get("since", 1))
        if since > version:
            raise GraphMetadataError(f"{where}: metadata {key} came with schema {since}, but the graph's metadata "
                                     f"says schema {version}; compile the graph again")
    for key, value in out.items():
        spec = keys().get(key)
        if spec is not None:
            problem = check(value, spec["schema"], key)
            if problem:
                raise GraphMetadataError(f"{where}: metadata {problem}; compile the graph again")
    return out


# --------------------------------------------------------------------------- the type check


_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _type_of(schema: Mapping[str, Any]) -> set[str]:
    t = schema.get("type")
    return set(t) if isinstance(t, list) else {t} if t else set(_JSON_TYPES)


def check(value: Any, schema: Mapping[str, Any], where: str) -> str | None:
    """The first way `value` breaks `schema` (the subset of JSON Schema the definition uses), as
    "WHERE is FOUND, expected EXPECTED"; None when it fits."""
    types = _type_of(schema)
    if not any(_JSON_TYPES[t](value) for t in types):
        return f"{where} is {_describe(value)}, expected {' or '.join(sorted(types))}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} is {value!r}, expected one of {schema['enum']}"
    if "minimum" in schema and _JSON_TYPES["number"](value) and value < schema["minimum"]:
        return f"{where} is {value!r}, expected at least {schema['minimum']}"
    if isinstance(value, list):
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        if len(value) < lo or (hi is not None and len(value) > hi):
            span = f"{lo}" if hi == lo else f"{lo} to {hi}" if hi is not None else f"at least {lo}"
            return f"{where} has {len(value)} items, expected {span}"
        for i, item in enumerate(value):
            problem = "items" in schema and check(item, schema["items"], f"{where}[{i}]")
            if problem:
                return problem
    if isinstance(value, dict):
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            return f"{where} lacks {', '.join(map(repr, missing))}"
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            problem = sub is not None and check(v, sub, f"{where}[{k!r}]")
            if problem:
                return problem
    return None


def _describe(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    kind = "null" if value is None else next((t for t in ("boolean", "integer", "number", "string", "array", "object")
                                              if _JSON_TYPES[t](value)), type(value).__name__)
    return f"{kind} {text[:40]}"
