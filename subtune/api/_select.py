"""`subtune.select`: the active-learning step of `subtune select` (paper §4.2). The frozen prefix
runs once over the pool (cached, as in training), the task's head scores every image, and the
images with the smallest margin P(y1|x) - P(y2|x) are picked for labelling."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from subtune.api._common import _load_base, _load_task, _where, say
from subtune.errors import SubtuneError

if TYPE_CHECKING:
    from subtune.delta import TaskDelta
    from subtune.models import BaseModel

log = logging.getLogger("subtune")

PICKS_FORMAT = "subtune.picks/1"


@dataclass
class SelectResult:
    """The picks (report["picks"]: rank, index, id, margin, predicted, p1, p2 and label when the
    pool is labelled) and the whole picks JSON, written at `output` when one was given."""

    report: dict[str, Any]
    output: Path | None
    available: int  # pool images not excluded
    prefix_seconds: float  # the frozen prefix's one pass over the pool

    @property
    def picks(self) -> list[dict[str, Any]]:
        return self.report["picks"]

    @property
    def ids(self) -> list[str]:
        return [p["id"] for p in self.report["picks"]]

    @property
    def files(self) -> list[Path]:
        return [self.output] if self.output is not None else []


def select(base: "str | os.PathLike | BaseModel", task: "str | os.PathLike | TaskDelta", pool: str, budget: int,
           output: str | os.PathLike | None = None, *, pool_split: str = "pool", pool_limit: int | None = None,
           data_seed: int = 0, label_map: str | dict | None = None,
           exclude: "str | os.PathLike | Iterable[str] | dict | None" = None, include_training: bool = False,
           batch_size: int = 256, cache_dir: str | None = None, cache_memory: float | None = None,
           threads: int | None = None, on_progress: Callable[[str], None] | None = None) -> SelectResult:
    """Pick `budget` images of `pool` for labelling: those the task is least sure of.

    base, task: paths or loaded objects; the task trained on the labelled images so far.
    pool: images:DIR (unlabelled), or a labelled dataset spec whose labels are ignored
        (fashion-mnist, imagefolder:DIR, ...); pool_split: pool (every labelled-pool image),
        train, val or test; pool_limit: a seeded subset (data_seed).
    exclude: the picks of an earlier round (a picks JSON path, its dict, or a list of ids): never
        picked again. Images the task was trained and validated on are excluded when the pool is
        its training data, unless include_training.
    output: the picks JSON (subtune.picks/1) to write; None keeps it in memory.
    threads: torch's intra-op CPU threads for this call; torch's own count is restored after it.
    """
    from subtune.api._train import process_state

    with process_state(threads):
        return _select(base, task, pool, budget, output, pool_split=pool_split, pool_limit=pool_limit,
                       data_seed=data_seed, label_map=label_map, exclude=exclude, include_training=include_training,
                       batch_size=batch_size, cache_dir=cache_dir, cache_memory=cache_memory, on_progress=on_progress)


def _select(base, task, pool: str, budget: int, output, *, pool_split, pool_limit, data_seed, label_map, exclude,
            include_training, batch_size, cache_dir, cache_memory, on_progress) -> SelectResult:
    began = time.perf_counter()

    import numpy as np
    import torch

    from subtune.atomic import check_writable, write_text
    from subtune.delta import validate_task
    from subtune.training.active import margins, pick_smallest_margins
    from subtune.training.cache import ActivationStore
    from subtune.training.data import load_dataset
    from subtune.training.network import SubTuneNet, features_point, freeze
    from subtune.training.options import normalisation
    from subtune.training.trainer import predict

    out = check_writable(Path(output)) if output is not None else None
    if budget < 1:
        raise SubtuneError(f"`budget` must be at least 1, found {budget}")
    base_model = _load_base(base)
    task_model = _load_task(task)
    _, backbone = base_model.build()
    validate_task(task_model, base_model, backbone)
    backbone = freeze(backbone)
    backbone.model.to(memory_format=torch.channels_last)  # faster CPU convolutions, as in training

    pre = task_model.meta.get("preprocess")
    if pre:
        size, mean, std = tuple(pre["image_size"]), pre["mean"], pre["std"]
    else:
        size, (mean, std) = base_model.input_size, normalisation(base_model)
        say(on_progress, f"note: {_where(task)} records no preprocessing; using the base's ({size[0]}x{size[1]})")
    common = dict(image_size=size, mean=mean, std=std, seed=data_seed)
    pool_ds = load_dataset(pool, pool_split, limit=pool_limit, label_map=label_map, **common)
    if pool_ds.classes and (len(pool_ds.classes) != task_model.num_classes
                            or (task_model.classes and pool_ds.classes != task_model.classes)):
        raise SubtuneError(f"pool {pool} has classes {pool_ds.classes[:5]}{'...' if len(pool_ds.classes) > 5 else ''}, "
                           f"task {task_model.name!r} has {(task_model.classes or [])[:5] or task_model.num_classes}: "
                           "pass `label_map` so they match, or an unlabelled pool (images:DIR)")

    excluded = _excluded_ids(exclude, include_training, pool, task_model, pool_ds, size, mean, std)
    mask = np.array([i in excluded for i in pool_ds.ids], dtype=bool)
    available = int((~mask).sum())
    if available == 0:
        raise SubtuneError(f"every image of the pool ({len(pool_ds)}) is excluded: nothing to pick")

    net = SubTuneNet.from_task(backbone, task_model)
    memory = None if cache_memory is None else int(cache_memory * 2**30)
    store = ActivationStore(backbone, pool_ds, batch_size=batch_size, cache_dir=cache_dir, memory_budget=memory)
    acts = store.get(net.cut)
    feats = store.get(features_point(backbone)) if net.siamese else None
    logits = predict(net, lambda idx, g: (acts[idx], feats[idx] if feats is not None else None), len(pool_ds),
                     batch_size)
    m = margins(logits)
    chosen = pick_smallest_margins(m, budget, mask)
    classes = task_model.classes or [str(i) for i in range(task_model.num_classes)]
    rows = []
    for rank, i in enumerate(chosen, 1):
        row = {"rank": rank, "index": int(i), "id": pool_ds.ids[i], "margin": float(m.margin[i]),
               "predicted": classes[m.predicted[i]], "p1": float(m.p1[i]), "p2": float(m.p2[i])}
        if pool_ds.labelled:
            row["label"] = pool_ds.classes[int(pool_ds.labels[i])]
        rows.append(row)
    report = {
        "format": PICKS_FORMAT, "task": task_model.name, "task_file": _where(task),
        "blocks": [task_model.first, task_model.last] if task_model.first is not None else [],
        "pool": pool, "pool_split": pool_split, "pool_size": len(pool_ds), "excluded": int(mask.sum()),
        "budget": budget, "picked": len(rows), "criterion": "smallest margin P(y1|x) - P(y2|x) (paper §4.2)",
        "margin_quantiles": {q: float(np.quantile(m.margin[~mask], float(q))) for q in ("0.0", "0.5", "1.0")},
        "seconds": {"frozen_prefix": round(store.seconds, 2), "total": round(time.perf_counter() - began, 2)},
        "picks": rows,
    }
    if pool_ds.labelled:
        report["pool_accuracy"] = float((m.predicted == pool_ds.labels.numpy()).mean())
    if out is not None:
        write_text(out, json.dumps(report, indent=2))
    log.info("picked %d of %d pool images%s", len(rows), len(pool_ds), f"; wrote {out}" if out else "")
    return SelectResult(report, out, available, store.seconds)


def _excluded_ids(exclude, include_training: bool, pool: str, task, pool_ds, size, mean, std) -> set[str]:
    from subtune.training.data import load_dataset

    ids: set[str] = set()
    if isinstance(exclude, (str, os.PathLike)):
        try:
            exclude = json.loads(Path(exclude).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SubtuneError(f"`exclude` {exclude}: not a readable JSON file ({e})") from e
    if exclude is not None:
        rows = exclude.get("picks", []) if isinstance(exclude, dict) else exclude
        ids |= {str(r["id"]) if isinstance(r, dict) else str(r) for r in rows}
    trained = (task.meta.get("data") or {})
    info = trained.get("train") or {}
    if not include_training and info.get("spec") == pool:
        for split in ("train", "val"):
            i = trained.get(split) or {}
            if i.get("source_split") != pool_ds.info["source_split"]:
                continue
            ds = load_dataset(i["spec"], split, image_size=size, mean=mean, std=std, limit=i.get("limit"),
                              seed=i.get("seed", 0), val_split=i.get("val_split"), label_map=i.get("label_map"))
            ids |= set(ds.ids)
    return ids
