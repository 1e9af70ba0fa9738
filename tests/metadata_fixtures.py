"""Graphs whose subtune metadata breaks the definition (subtune/graph_metadata.schema.json), for the
tests of every reader: Python (serving, inspect), the Triton model and the C++ library."""

from __future__ import annotations

import json
from pathlib import Path


def rewrite_metadata(src: str | Path, dst: str | Path, *, set: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A copy of the compiled graph `src` at `dst` with metadata keys replaced (`set`: values as
    Python objects; strings stored as they are, others as JSON) or removed (`drop`)."""
    import onnx

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props if p.key not in drop}
    for key, value in (set or {}).items():
        props[key] = value if isinstance(value, str) else json.dumps(value)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
    return Path(dst)


def newer_schema(src: str | Path, dst: str | Path) -> Path:
    """`src` claiming the next schema version, which no reader of this checkout knows."""
    from subtune.graph_metadata import schema_version, version_key

    return rewrite_metadata(src, dst, set={version_key(): schema_version() + 1})


def missing_key(src: str | Path, dst: str | Path, key: str = "subtune.outputs") -> Path:
    return rewrite_metadata(src, dst, drop=(key,))


def with_subtune_metadata(model, outputs: list[str], input_size=(8, 8)):
    """A hand-built ONNX ModelProto given the metadata of a compiled graph with these outputs (no
    tasks' details beyond their names), so readers take it as a subtune graph."""
    from subtune.graph_metadata import encode

    tasks = [{"name": n, "blocks": [1, 1], "siamese": False, "num_classes": 1, "kind": "delta", "classes": None}
             for n in outputs[1:]]
    meta = encode({"subtune.version": "test", "subtune.arch": "test:hand_built", "subtune.base_fingerprint": "0" * 64,
                   "subtune.input_size": list(input_size), "subtune.outputs": list(outputs),
                   "subtune.verified": False, "subtune.tasks": tasks}, complete=True)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model
