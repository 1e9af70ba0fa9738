"""Writing what training produced.

    subtune  a task delta (subtune.task/1): the tuned blocks and the head.
    linear   a task delta too, so the compiler can deploy it: the task format needs at least one
             block, so it carries the last block with the base's own weights, unchanged, and
             meta["mode"] = "linear" says so (the compiled graph runs that block once more).
    full     NOT a task delta: a whole model, written in the base-file format
             (subtune.base/1, arch_kwargs with the new num_classes) plus
             "kind": "full-finetune", "finetuned_from": <base fingerprint>, "classes", "meta".
             `subtune-compile full.pt -o full.onnx` deploys it as a model of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

import subtune
from subtune.formats import RESERVED_NAMES, BaseModel, fingerprint, make_task, save_dict, save_task
from subtune.training.trainer import TrainResult

FULL_KIND = "full-finetune"


def task_name_from(path: str) -> str:
    """A usable task (and ONNX output) name from an output path: `out/fmnist-10.pt` -> `fmnist-10`."""
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", Path(path).stem)[:64] or "task"
    if not re.match(r"[A-Za-z_]", name):
        name = f"t_{name}"[:64]
    return f"{name}_task" if name in RESERVED_NAMES else name


def write_result(path: str, base: BaseModel, result: TrainResult, *, name: str, classes: list[str],
                 meta: dict) -> str:
    """Write the file for `result`; returns what was written, in words."""
    meta = {**meta, "mode": result.mode, "subtune_version": subtune.__version__}
    net = result.net
    if result.mode == "full":
        state = {k: v.detach().cpu().clone().contiguous() for k, v in net.model.state_dict().items()}
        model = BaseModel(base.arch, dict(net.arch_kwargs), state, fingerprint(state))
        save_dict(path, {**model.to_dict(), "kind": FULL_KIND, "finetuned_from": base.fingerprint,
                         "classes": list(classes), "meta": meta})
        return f"a fully finetuned model (base-file format, kind {FULL_KIND!r}; not a task delta)"
    if result.mode == "linear":
        last = net.backbone.num_blocks
        meta["note"] = (f"linear probe: block {last} carries the base's weights unchanged because a task "
                        "needs at least one block")
        task = make_task(base, name, [last], [net.backbone.blocks[last - 1]], net.head, classes=list(classes),
                         meta=meta)
    else:
        task = make_task(base, name, result.blocks, list(net.tuned), net.head, siamese=net.siamese,
                         classes=list(classes), meta=meta)
    save_task(path, task)
    which = f"blocks {_span(task.blocks)}" if len(task.blocks) > 1 else f"block {task.blocks[0]}"
    return f"task {task.name!r} on {which}" + (" (siamese)" if task.siamese else "")


def _span(blocks: list[int]) -> str:
    return f"{blocks[0]}-{blocks[-1]}" if len(blocks) > 1 else str(blocks[0])
