"""Describe subtune files for people and programs (`subtune inspect`)."""

from __future__ import annotations

from pathlib import Path

from subtune import graph_metadata
from subtune.errors import SubtuneError


def describe(path: str) -> dict:
    if Path(path).suffix == ".onnx":
        return _describe_onnx(path)
    from subtune.formats import BASE_FORMAT, TASK_FORMAT, load_base, load_dict, load_task

    raw = load_dict(path, "subtune")
    fmt = raw.get("format")
    if fmt == BASE_FORMAT:
        base = load_base(path)
        n = sum(v.numel() for v in base.state_dict.values())
        info = {"format": fmt, "kind": raw.get("kind", "base"), "arch": base.arch, "arch_kwargs": base.arch_kwargs,
                "parameters": n, "fingerprint": base.fingerprint}
        # A fully finetuned model is written in the base format (training/outputs.py): say what it came from.
        info.update({k: raw[k] for k in ("finetuned_from", "classes") if k in raw})
        if isinstance(raw.get("meta"), dict):
            info["meta"] = {k: v for k, v in raw["meta"].items() if k != "history"}
        return info
    if fmt == TASK_FORMAT:
        t = load_task(path)
        n = sum(v.numel() for sd in t.block_state.values() for v in sd.values())
        return {"format": fmt, "name": t.name, "arch": t.arch, "blocks": t.blocks, "siamese": t.siamese,
                "num_classes": t.num_classes, "classes": t.classes, "block_parameters": n,
                "base_fingerprint": t.base_fingerprint, "meta": {k: v for k, v in t.meta.items() if k != "history"}}
    raise SubtuneError(f"{path}: expected a subtune base/task file or an .onnx file, found format {fmt!r}")


def _weights(model, path: Path) -> dict:
    """Bytes of the graph's weights, and for a graph with external data (over 2 GiB) the weights
    file beside it, which must be there (a pair moved apart does not load)."""
    import onnx

    inline = sum(len(t.raw_data) for t in model.graph.initializer)
    files = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    if not files:
        return {"weights_bytes": inline}
    external = {}
    for name in files:
        data = path.parent / name
        if not data.is_file():
            raise SubtuneError(f"{path}: its weights are in {name}, which is not beside it; keep the .onnx and "
                               "its .data file together")
        external[name] = data.stat().st_size
    lengths = [int(e.value) for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
               for e in t.external_data if e.key == "length"]
    return {"weights_bytes": inline + sum(lengths), "external_data": external}


def _describe_onnx(path: str) -> dict:
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise SubtuneError(f"{path}: not a readable ONNX file ({type(e).__name__})") from e
    info = {"format": "onnx", "opset": [f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import],
            "inputs": [i.name for i in model.graph.input], "outputs": [o.name for o in model.graph.output],
            "nodes": len(model.graph.node), **_weights(model, Path(path))}
    props = {p.key: p.value for p in model.metadata_props}
    if not any(k.startswith(graph_metadata.PREFIX) for k in props):
        return {**info, "subtune_graph": False}  # any ONNX file can be described; it is not a compiled one
    try:
        return {**info, "subtune_graph": True, **graph_metadata.decode(props, path)}
    except graph_metadata.GraphMetadataError as e:
        raise SubtuneError(str(e)) from None
