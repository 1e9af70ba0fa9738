"""Writing what training produced.

    subtune  a task delta (subtune.task/1): the tuned blocks and the head.
    linear   a tap task (subtune.task/1, kind "tap"): the head on the base's own features, which
             the compiler attaches to the shared stream without forking. (Before tap tasks, a
             probe carried the last block with the base's weights and forked there; such files
             still load and compile as they did.)
    head2toe a tap task: the tapped points, their pooling, the selected features and the head;
             meta["head2toe"] records the budget, the group-lasso strength and each feature's
             importance.
    lora     a task delta: the adapters merged into the blocks' weights (meta["lora"]: rank,
             alpha, adapted layers), so it deploys like SubTuning on the same blocks.
    full     NOT a task delta: a whole model, written in the base-file format
             (subtune.base/1, arch_kwargs with the new num_classes) plus
             "kind": "full-finetune", "finetuned_from": <base fingerprint>, "classes", "meta".
             `subtune-compile full.pt -o full.onnx` deploys it as a model of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

from subtune.delta import RESERVED_NAMES, TaskDelta, make_tap_task, make_task
from subtune.formats import base_to_dict, save_dict, save_task
from subtune.models import BaseModel, fingerprint
from subtune.models.blocks import block_span
from subtune.training.trainer import TrainResult
from subtune.version import __version__

FULL_KIND = "full-finetune"


def task_name_from(path: str) -> str:
    """A usable task (and ONNX output) name from an output path: `out/fmnist-10.pt` -> `fmnist-10`."""
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", Path(path).stem)[:64] or "task"
    if not re.match(r"[A-Za-z_]", name):
        name = f"t_{name}"[:64]
    return f"{name}_task" if name in RESERVED_NAMES else name


def write_result(path: str, base: BaseModel, result: TrainResult, *, name: str, classes: list[str],
                 meta: dict) -> str:
    """Write the file for `result` (atomically); returns what was written, in words."""
    model, what = result_model(base, result, name=name, classes=classes, meta=meta)
    save_model(path, model, base, result, classes=classes, meta=meta)
    return what


def save_model(path: str, model: BaseModel | TaskDelta, base: BaseModel, result: TrainResult, *,
               classes: list[str], meta: dict) -> None:
    """Write what `result_model` made: a task file, or a full model in the base-file format."""
    if isinstance(model, BaseModel):
        save_dict(path, full_model_dict(model, base, classes, model_meta(result, meta)))
    else:
        save_task(path, model)


def model_meta(result: TrainResult, meta: dict) -> dict:
    return {**meta, "mode": result.mode, "subtune_version": __version__}


def full_model_dict(model: BaseModel, base: BaseModel, classes: list[str], meta: dict) -> dict:
    """A fully finetuned model in the base-file format, marked as such."""
    return {**base_to_dict(model), "kind": FULL_KIND, "finetuned_from": base.fingerprint, "classes": list(classes),
            "meta": meta}


def result_model(base: BaseModel, result: TrainResult, *, name: str, classes: list[str],
                 meta: dict) -> tuple[BaseModel | TaskDelta, str]:
    """What training produced, in memory: a TaskDelta, or (mode full) a BaseModel of the whole
    finetuned model; and what it is, in words."""
    meta = model_meta(result, meta)
    net = result.net
    if result.mode == "full":
        state = {k: v.detach().cpu().clone().contiguous() for k, v in net.model.state_dict().items()}
        model = BaseModel(base.arch, dict(net.arch_kwargs), state, fingerprint(state))
        return model, f"a fully finetuned model (base-file format, kind {FULL_KIND!r}; not a task delta)"
    size = tuple(meta["preprocess"]["image_size"]) if isinstance(meta.get("preprocess"), dict) else None
    if result.mode == "linear":
        bb = net.backbone
        meta["method"] = "linear"
        point = {"point": bb.num_blocks + 2, "grid": None, "dim": bb.feature_dim}
        task = make_tap_task(base, name, [point], net.head, classes=list(classes), meta=meta, input_size=size)
    elif result.mode == "head2toe":
        meta["method"] = "head2toe"
        meta["head2toe"] = {k: v for k, v in result.method.items() if k not in ("method", "importance")}
        task = make_tap_task(base, name, net.specs, net.head, select=net.select, classes=list(classes), meta=meta,
                             input_size=size)
    elif result.mode == "lora":
        meta["method"] = "lora"
        meta["lora"] = {k: v for k, v in result.method.items() if k != "method"}
        if isinstance(meta.get("training"), dict):  # LoRA keeps the blocks' BatchNorm as the base has it
            meta["training"] = {**meta["training"], "tuned_bn_statistics": "frozen (LoRA)"}
        task = make_task(base, name, result.blocks, net.merged_blocks(), net.head, classes=list(classes), meta=meta)
    else:
        task = make_task(base, name, result.blocks, list(net.tuned), net.head, siamese=net.siamese,
                         classes=list(classes), meta=meta)
    if task.taps is not None:
        points = task.tap_points
        return task, (f"tap task {task.name!r} ({result.mode}): a head on {task.head['weight'].shape[1]} features "
                      f"pooled from {len(points)} point{'s' if len(points) > 1 else ''} of the base, no forked blocks")
    which = f"blocks {block_span(task.blocks)}" if len(task.blocks) > 1 else f"block {task.blocks[0]}"
    return task, f"task {task.name!r} on {which}" + (" (siamese)" if task.siamese else "") + \
        (" (LoRA merged)" if result.mode == "lora" else "")
