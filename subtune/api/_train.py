"""`subtune.train`: what `subtune train` does. SubTuning on chosen or greedily selected blocks
(paper §3, §5), or a linear probe, full finetuning, Head2Toe or LoRA baseline; writes the task
file and a JSON report atomically, or returns the task in memory when no output is given."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from subtune.api._common import _load_base, _where, report_path, say
from subtune.errors import SubtuneError

if TYPE_CHECKING:
    from subtune.delta import TaskDelta
    from subtune.models import BaseModel
    from subtune.training.data import ImageDataset
    from subtune.training.trainer import TrainResult as Run

log = logging.getLogger("subtune")

MODES = ("subtune", "linear", "full", "head2toe", "lora")


@dataclass
class TrainResult:
    """What `train` produced: the task (or, mode full, a whole model in the base format), the
    report the `.train.json` holds, and where they were written (None when kept in memory)."""

    model: "TaskDelta | BaseModel"  # a TaskDelta, or a BaseModel for mode "full"
    report: dict[str, Any]
    output: Path | None
    report_path: Path | None
    written: str  # what the model is, in words
    run: "Run" = field(repr=False)  # the trainer's result: the trained network, history, timings
    cache_seconds: float = 0.0  # running the frozen layers once to cache their activations

    @property
    def task(self) -> "TaskDelta":
        """The task delta, for `subtune.compile(base, [result.task], ...)`."""
        if self.run.mode == "full":
            raise SubtuneError("mode full trains a whole model, not a task delta: compile result.model on its own")
        return self.model

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.output, self.report_path) if p is not None]

    @property
    def val_accuracy(self) -> float:
        return self.run.val_accuracy

    @property
    def test_accuracy(self) -> float | None:
        return self.run.test_accuracy


def train(base: "str | os.PathLike | BaseModel", data: "str | Sequence[ImageDataset]",
          output: str | os.PathLike | None = None, *, blocks: str | Sequence[int] | None = None,
          mode: str = "subtune", name: str | None = None, report: bool | str | os.PathLike = True,
          siamese: bool = False, epsilon: float = 0.005, max_blocks: int = 3,
          lora_rank: int = 8, lora_alpha: float | None = None,
          feature_budget: str | int | Sequence[int] | None = None, tap_grid: int = 2, group_lasso: float = 0.05,
          image_size: int | None = None, limit: int | None = None, val_split: float | None = None,
          data_seed: int = 0, label_map: str | dict | None = None, test: bool = False, test_limit: int | None = None,
          epochs: int | None = None, lr: float = 1e-3, weight_decay: float = 0.01, batch_size: int = 256,
          seed: int = 0, augment: str = "none", freeze_bn: bool = False, cache: bool = True,
          cache_dir: str | None = None, cache_memory: float | None = None, threads: int | None = None,
          ray: str | None = None, ray_cpus_per_run: float = 1, ray_gpus_per_run: float = 0,
          on_progress: Callable[[str], None] | None = None) -> TrainResult:
    """Train one task on `base` (a path or a loaded BaseModel).

    data: a dataset spec as `subtune train --data` takes it (fashion-mnist, imagefolder:DIR,
        cifar10:DIR, ...), or loaded splits (train, val) or (train, val, test) from
        subtune.training.data.load_dataset (then image_size, limit, val_split, data_seed,
        label_map, test_limit do not apply; a test split is evaluated when given).
    output: the task file to write (mode full: a whole model in the base-file format); None keeps
        it in memory (result.task / result.model), with no report unless `report` is a path.
    blocks: FIRST-LAST ("13-14"), a list ("13,14" or [13, 14]), a stage name ("layer3"), or
        "auto" (greedy selection on the validation split, `epsilon`, `max_blocks`); needed for
        mode subtune; lora/head2toe: the adapted/tapped blocks (default all).
    report: True writes `<output stem>.train.json` beside the output; a path writes it there.
    ray: "local", "auto" or HOST:PORT: blocks="auto" scores each step's candidates as Ray tasks.
    on_progress: called with each progress line (also logged at INFO on the "subtune" logger).
    The rest are the training options of `subtune train --help` (defaults: the paper's Appendix A).
    """
    began = time.perf_counter()
    _prepare(threads)
    from subtune.atomic import check_writable
    from subtune.delta import TASK_NAME
    from subtune.training.outputs import task_name_from

    out = check_writable(Path(output)) if output is not None else None
    rpath = report_path(report, out, ".train.json")
    blocks_text = _blocks_text(blocks)
    if name is None:
        name = task_name_from(str(out)) if out is not None else "task"
    if mode not in MODES:
        raise SubtuneError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode != "full" and not TASK_NAME.match(name):
        raise SubtuneError(f"--name {name!r}: expected letters, digits, '_' or '-', starting with a letter or '_'")
    if mode == "subtune" and not blocks_text:
        raise SubtuneError("--blocks is required with --mode subtune: e.g. --blocks 13-14, a stage name, or auto")
    if mode in ("linear", "full") and (blocks_text or siamese):
        raise SubtuneError(f"--mode {mode} trains no chosen blocks: drop --blocks/--siamese")
    if mode in ("lora", "head2toe") and siamese:
        raise SubtuneError(f"--siamese is for --mode subtune; --mode {mode} has a plain head")
    if mode in ("lora", "head2toe") and blocks_text and blocks_text == "auto":
        raise SubtuneError(f"--blocks auto is for --mode subtune; with --mode {mode} give blocks "
                           "(e.g. the ones `--blocks auto` chose for SubTuning) or leave --blocks out for all")
    if mode == "lora" and (lora_rank < 1 or (lora_alpha is not None and lora_alpha <= 0)):
        raise SubtuneError("--lora-rank must be at least 1 and --lora-alpha positive")
    if mode == "head2toe" and tap_grid < 1:
        raise SubtuneError(f"--tap-grid must be at least 1, found {tap_grid}")
    if max_blocks < 1:
        raise SubtuneError("--max-blocks must be at least 1")

    from subtune.models.blocks import parse_blocks
    from subtune.training.outputs import result_model, save_model

    base_model = _load_base(base)
    _, backbone = base_model.build()
    auto = mode == "subtune" and blocks_text == "auto"
    chosen = parse_blocks(blocks_text, backbone) if blocks_text and not auto else None
    budgets = None
    if mode == "head2toe":
        from subtune.training.head2toe import parse_budgets

        budgets = parse_budgets(",".join(map(str, feature_budget)) if isinstance(feature_budget, (list, tuple))
                                else feature_budget)

    trainer = _trainer(base_model, data, image_size=image_size, limit=limit, val_split=val_split, data_seed=data_seed,
                       label_map=label_map, test=test, test_limit=test_limit, epochs=epochs, lr=lr,
                       weight_decay=weight_decay, batch_size=batch_size, seed=seed, augment=augment,
                       freeze_bn=freeze_bn, cache=cache, cache_dir=cache_dir, cache_memory=cache_memory,
                       on_progress=on_progress)
    train_ds, val_ds, test_ds, config = *_split_datasets(trainer), trainer.config
    path = None
    if mode == "linear":
        run = trainer.linear()
    elif mode == "full":
        run = trainer.full()
    elif mode == "lora":
        run = trainer.lora(chosen, rank=lora_rank, alpha=lora_alpha)
    elif mode == "head2toe":
        from subtune.training.head2toe import default_points

        run = trainer.head2toe(points=default_points(trainer.backbone, chosen), grid=tap_grid, budgets=budgets,
                               group_lasso=group_lasso)
    elif auto:
        greedy = dict(siamese=siamese, epsilon=epsilon, max_blocks=max_blocks, on_progress=on_progress)
        if ray:
            run, path = _greedy_on_ray(trainer, ray=ray, cpus_per_run=ray_cpus_per_run,
                                       gpus_per_run=ray_gpus_per_run, **greedy)
        else:
            run, path = _greedy(trainer, **greedy)
    else:
        run = trainer.subtune(chosen, siamese=siamese)

    meta = {"val_accuracy": run.val_accuracy, "training": {**config.to_meta(), "seed": run.seed},
            "data": {split: ds.info for split, ds in (("train", train_ds), ("val", val_ds), ("test", test_ds))
                     if ds is not None},
            "preprocess": train_ds.preprocess(), "params": run.params, "seconds": round(run.seconds, 2),
            "history": run.history}
    if run.test_accuracy is not None:
        meta["test_accuracy"] = run.test_accuracy
    if path is not None:
        meta["selection"] = path.to_json()
    model, what = result_model(base_model, run, name=name, classes=train_ds.classes, meta=meta)
    if out is not None:
        save_model(str(out), model, base_model, run, classes=train_ds.classes, meta=meta)
    result_report = {"output": str(out) if out is not None else None, "wrote": what, "base": _where(base),
                     "name": name, **run.summary(), "classes": train_ds.classes, "preprocess": train_ds.preprocess(),
                     "training": meta["training"], "data": meta["data"], "history": run.history,
                     "selection": meta.get("selection"), "cache_seconds": round(trainer.cache_seconds, 2),
                     "total_seconds": round(time.perf_counter() - began, 2)}
    if rpath is not None:
        from subtune.atomic import write_text

        write_text(rpath, json.dumps(result_report, indent=2))
    log.info("trained %s; wrote %s", what, ", ".join(str(p) for p in (out, rpath) if p is not None) or "nothing")
    return TrainResult(model, result_report, out, rpath, what, run, trainer.cache_seconds)


# --------------------------------------------------------------------------- helpers


def _prepare(threads: int | None) -> None:
    """Before torch is imported: OpenMP threads that spin while waiting made training up to 20x
    slower on a shared 2-core machine (see training/options.prepare_runtime)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is not None:
        if threads < 1:
            raise SubtuneError("--threads must be at least 1")
        import torch

        torch.set_num_threads(threads)


def _blocks_text(blocks) -> str | None:
    if blocks is None:
        return None
    if isinstance(blocks, str):
        return blocks.strip() or None
    if isinstance(blocks, int) and not isinstance(blocks, bool):
        return str(blocks)
    try:
        return ",".join(str(int(b)) for b in blocks) or None
    except (TypeError, ValueError):
        raise SubtuneError(f"blocks: expected FIRST-LAST, a list of block numbers, a stage name or 'auto'; "
                           f"found {blocks!r}") from None


def _trainer(base_model, data, *, image_size, limit, val_split, data_seed, label_map, test, test_limit, epochs, lr,
             weight_decay, batch_size, seed, augment, freeze_bn, cache, cache_dir, cache_memory, on_progress):
    """A Trainer on the data's splits (`_splits`), with the training configuration (epochs by the
    training split's size when not given); says the `data ...` progress line."""
    from subtune.training.options import data_summary
    from subtune.training.trainer import Trainer, TrainConfig, default_epochs

    train, val, test_ds = _splits(data, base_model, image_size=image_size, limit=limit, val_split=val_split,
                                  data_seed=data_seed, label_map=label_map, test=test, test_limit=test_limit)
    config = TrainConfig(epochs=epochs or default_epochs(len(train)), lr=lr, weight_decay=weight_decay,
                         batch_size=batch_size, seed=seed, augment=augment, freeze_bn=freeze_bn, cache=cache)
    say(on_progress, f"data {data_summary(train, val, test_ds)}")
    budget = None if cache_memory is None else int(cache_memory * 2**30)
    return Trainer(base_model, train, val, test_ds, config=config, cache_dir=cache_dir, memory_budget=budget)


def _split_datasets(trainer) -> tuple:
    """(train, val, test or None) of a Trainer."""
    return trainer.data["train"], trainer.data["val"], trainer.data.get("test")


def _splits(data, base, *, image_size, limit, val_split, data_seed, label_map, test, test_limit):
    """(train, val, test or None) from a spec, or the loaded splits as given."""
    from subtune.training.data import ImageDataset

    if isinstance(data, (str, os.PathLike)):
        from types import SimpleNamespace

        from subtune.training.options import load_splits

        args = SimpleNamespace(data=str(data), image_size=image_size, limit=limit, val_split=val_split,
                               data_seed=data_seed, label_map=label_map, test=test, test_limit=test_limit)
        return load_splits(args, base)
    splits = list(data) if isinstance(data, (list, tuple)) else None
    if not splits or len(splits) not in (2, 3) or not all(isinstance(d, ImageDataset) for d in splits):
        raise SubtuneError("data: expected a dataset spec (e.g. imagefolder:DIR) or loaded splits (train, val) or "
                           f"(train, val, test), found {type(data).__name__}")
    return splits[0], splits[1], splits[2] if len(splits) == 3 else None


def _greedy(trainer, *, siamese: bool, epsilon: float, max_blocks: int, on_progress):
    from subtune.training.greedy import greedy_select

    results = {}

    def score(blocks: list[int]) -> float:
        key = tuple(blocks)
        if key not in results:
            results[key] = trainer.subtune(blocks, siamese=siamese, test=False)
            say(on_progress, f"  blocks {blocks[0]}-{blocks[-1]}: validation accuracy {results[key].val_accuracy:.4f}")
        return results[key].val_accuracy

    linear = trainer.linear()
    say(on_progress, f"greedy selection (epsilon {epsilon}, at most {max_blocks} blocks); "
                     f"linear probe validation accuracy {linear.val_accuracy:.4f}")
    path = greedy_select(score, trainer.backbone.num_blocks, epsilon=epsilon, max_blocks=max_blocks,
                         start_score=linear.val_accuracy)
    for line in path.describe():
        say(on_progress, line)
    return trainer.evaluate_test(results[tuple(path.selected)]), path


def _greedy_on_ray(trainer, *, ray: str, cpus_per_run: float, gpus_per_run: float, siamese: bool, epsilon: float,
                   max_blocks: int, on_progress):
    """Each step's candidate windows as parallel Ray tasks, which return numbers, not weights; the
    chosen window is then trained once more here with the workers' thread count (the same seed
    and threads give the same weights)."""
    import torch

    from subtune.sweeps import RayExecutor
    from subtune.training.greedy import greedy_select
    from subtune.training.profile import window_scorer

    linear = trainer.linear()
    say(on_progress, f"greedy selection on Ray (epsilon {epsilon}, at most {max_blocks} blocks); "
                     f"linear probe validation accuracy {linear.val_accuracy:.4f}")

    def show(spec, result):
        say(on_progress, f"  blocks {spec.group}: validation accuracy {result['val_accuracy']:.4f}")

    with RayExecutor(trainer, address=None if ray == "local" else ray, cpus_per_run=cpus_per_run,
                     gpus_per_run=gpus_per_run) as ex:
        say(on_progress, f"running on {ex.describe()}")
        scorer = window_scorer(ex, seeds=[trainer.config.seed], siamese=siamese, on_run=show)
        path = greedy_select(None, trainer.backbone.num_blocks, epsilon=epsilon, max_blocks=max_blocks,
                             start_score=linear.val_accuracy, score_many=scorer)
    for line in path.describe():
        say(on_progress, line)
    torch.set_num_threads(ex.threads)
    result = trainer.subtune(path.selected, siamese=siamese, test=False)
    return trainer.evaluate_test(result), path
