from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from subtune.training.options import add_cache_arguments

    p.add_argument("base", help="base file (subtune.base/1)")
    p.add_argument("task", help="task delta trained on the labelled images so far")
    p.add_argument("--pool", required=True, help="images to choose from: images:DIR (unlabelled), or a labelled "
                                                 "dataset spec whose labels are ignored (fashion-mnist, imagefolder:DIR, ...)")
    p.add_argument("--budget", type=int, required=True, help="how many images to pick for labelling")
    p.add_argument("-o", "--output", required=True, help="picks JSON to write")
    p.add_argument("--pool-split", default="pool", choices=["pool", "train", "val", "test"],
                   help="pool: all labelled-pool images (default; --pool-limit draws a subset); or one split")
    p.add_argument("--pool-limit", type=int, help="a seeded subset of the pool")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--label-map", help="as for `subtune train`, so a labelled pool's classes match the task's")
    p.add_argument("--exclude", help="JSON from an earlier `subtune select` (or a list of ids): never pick these again")
    p.add_argument("--include-training", action="store_true",
                   help="allow picking the images the task was trained and validated on (excluded by default when "
                        "the pool is the task's training data)")
    p.add_argument("--batch-size", type=int, default=256)
    add_cache_arguments(p)


def run(args: argparse.Namespace) -> int:
    from subtune.training.options import prepare_runtime

    prepare_runtime(args)

    import json
    import time

    import numpy as np
    import torch

    from subtune.atomic import check_writable, write_text
    from subtune.errors import SubtuneError
    from subtune.formats import load_base, load_task, validate_task
    from subtune.training.active import margins, pick_smallest_margins
    from subtune.training.cache import ActivationStore
    from subtune.training.data import load_dataset
    from subtune.training.network import SubTuneNet, features_point, freeze
    from subtune.training.options import cache_options, normalisation
    from subtune.training.trainer import predict

    began = time.perf_counter()
    out = check_writable(args.output)
    if args.budget < 1:
        raise SubtuneError("--budget must be at least 1")
    base = load_base(args.base)
    task = load_task(args.task)
    _, backbone = base.build()
    validate_task(task, base, backbone)
    backbone = freeze(backbone)
    backbone.model.to(memory_format=torch.channels_last)  # faster CPU convolutions, as in training

    pre = task.meta.get("preprocess")
    if pre:
        size, mean, std = tuple(pre["image_size"]), pre["mean"], pre["std"]
    else:
        size, (mean, std) = base.input_size, normalisation(base)
        print(f"note: {args.task} records no preprocessing; using the base's ({size[0]}x{size[1]})")
    common = dict(image_size=size, mean=mean, std=std, seed=args.data_seed)
    pool = load_dataset(args.pool, args.pool_split, limit=args.pool_limit, label_map=args.label_map, **common)
    if pool.classes and (len(pool.classes) != task.num_classes or (task.classes and pool.classes != task.classes)):
        raise SubtuneError(f"pool {args.pool} has classes {pool.classes[:5]}{'...' if len(pool.classes) > 5 else ''}, "
                           f"task {task.name!r} has {(task.classes or [])[:5] or task.num_classes}: pass --label-map "
                           "so they match, or an unlabelled pool (images:DIR)")

    excluded = _excluded_ids(args, task, pool, size, mean, std, load_dataset)
    exclude = np.array([i in excluded for i in pool.ids], dtype=bool)
    available = int((~exclude).sum())
    if available == 0:
        raise SubtuneError(f"every image of the pool ({len(pool)}) is excluded: nothing to pick")

    net = SubTuneNet.from_task(backbone, task)
    store = ActivationStore(backbone, pool, batch_size=args.batch_size, **cache_options(args))
    acts = store.get(net.cut)
    feats = store.get(features_point(backbone)) if net.siamese else None
    logits = predict(net, lambda idx, g: (acts[idx], feats[idx] if feats is not None else None), len(pool),
                     args.batch_size)
    m = margins(logits)
    picks = pick_smallest_margins(m, args.budget, exclude)
    classes = task.classes or [str(i) for i in range(task.num_classes)]
    rows = []
    for rank, i in enumerate(picks, 1):
        row = {"rank": rank, "index": int(i), "id": pool.ids[i], "margin": float(m.margin[i]),
               "predicted": classes[m.predicted[i]], "p1": float(m.p1[i]), "p2": float(m.p2[i])}
        if pool.labelled:
            row["label"] = pool.classes[int(pool.labels[i])]
        rows.append(row)
    result = {
        "format": "subtune.picks/1", "task": task.name, "task_file": args.task, "blocks": [task.first, task.last] if task.first is not None else [],
        "pool": args.pool, "pool_split": args.pool_split, "pool_size": len(pool), "excluded": int(exclude.sum()),
        "budget": args.budget, "picked": len(rows), "criterion": "smallest margin P(y1|x) - P(y2|x) (paper §4.2)",
        "margin_quantiles": {q: float(np.quantile(m.margin[~exclude], float(q))) for q in ("0.0", "0.5", "1.0")},
        "seconds": {"frozen_prefix": round(store.seconds, 2), "total": round(time.perf_counter() - began, 2)},
        "picks": rows,
    }
    if pool.labelled:
        result["pool_accuracy"] = float((m.predicted == pool.labels.numpy()).mean())
    write_text(out, json.dumps(result, indent=2))
    if task.first is None:  # a tap task (Head2Toe, linear probe) reads the images: nothing frozen is cached
        prefix = "nothing"
    else:
        prefix = "the stem" if task.first == 1 else f"stem and blocks 1-{task.first - 1}"
    note = f" (the pool holds only {available} images that are not excluded)" if available < args.budget else ""
    print(f"picked {len(rows)} of {len(pool)} pool images with the smallest margins{note}: "
          f"{rows[0]['margin']:.4f} to {rows[-1]['margin']:.4f}; frozen prefix ran once over the pool in "
          f"{store.seconds:.1f} s ({prefix} cached); {int(exclude.sum())} excluded")
    print(f"wrote {out}")
    return 0


def _excluded_ids(args, task, pool, size, mean, std, load_dataset) -> set[str]:
    import json
    from pathlib import Path

    from subtune.errors import SubtuneError

    ids: set[str] = set()
    if args.exclude:
        try:
            data = json.loads(Path(args.exclude).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SubtuneError(f"--exclude {args.exclude}: not a readable JSON file ({e})") from e
        rows = data.get("picks", []) if isinstance(data, dict) else data
        ids |= {str(r["id"]) if isinstance(r, dict) else str(r) for r in rows}
    trained = (task.meta.get("data") or {})
    info = trained.get("train") or {}
    if not args.include_training and info.get("spec") == args.pool:
        for split in ("train", "val"):
            i = trained.get(split) or {}
            if i.get("source_split") != pool.info["source_split"]:
                continue
            ds = load_dataset(i["spec"], split, image_size=size, mean=mean, std=std, limit=i.get("limit"),
                              seed=i.get("seed", 0), val_split=i.get("val_split"), label_map=i.get("label_map"))
            ids |= set(ds.ids)
    return ids
