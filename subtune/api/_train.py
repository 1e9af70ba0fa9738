"""`subtune.train`: what `subtune train` does. SubTuning on chosen or greedily selected blocks
(paper §3, §5), or a linear probe, full finetuning, Head2Toe or LoRA baseline; writes the task
file and a JSON report atomically, or returns the task in memory when no output is given.

    import subtune

    trained = subtune.train("base.pt", "imagefolder:dogs", "dogs.pt", method=subtune.SubTuning("layer3"),
                            training=subtune.TrainingOptions(epochs=5))

The method, the data, the schedule and Ray are typed option objects (subtune.training.options)
that take only their own settings."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from subtune.api._common import _load_base, _where, report_path, say
from subtune.errors import SubtuneError

if TYPE_CHECKING:
    from subtune.delta import TaskDelta
    from subtune.models import BaseModel
    from subtune.training.data import ImageDataset
    from subtune.training.options import DataOptions, Method, RayOptions, TrainingOptions
    from subtune.training.trainer import TrainResult as Run

log = logging.getLogger("subtune")


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
          output: str | os.PathLike | None = None, *, method: "Method", name: str | None = None,
          report: bool | str | os.PathLike = True, data_options: "DataOptions | None" = None,
          training: "TrainingOptions | None" = None, ray: "RayOptions | str | None" = None,
          threads: int | None = None, on_progress: Callable[[str], None] | None = None) -> TrainResult:
    """Train one task on `base` (a path or a loaded BaseModel).

    method: what trains, an option object of subtune.training.options (also `subtune.SubTuning`
        and so on): SubTuning(blocks="13-14" | [13, 14] | "layer3" | "auto", siamese=...),
        Head2Toe(...), LoRA(rank=...), Linear() or Full() (a whole model, not a task delta).
    data: a dataset spec (fashion-mnist, imagefolder:DIR, cifar10:DIR, ...), read as
        `data_options` says (DataOptions: image_size, limit, val_split, label_map, test, ...), or
        loaded splits (train, val) or (train, val, test) from subtune.training.data.load_dataset,
        used as given (then `data_options` does not apply; a test split is evaluated when given).
    output: the task file to write (Full: a whole model in the base-file format); None keeps it
        in memory (result.task / result.model), with no report unless `report` is a path.
    report: True writes `<output stem>.train.json` beside the output; a path writes it there.
    training: TrainingOptions (the schedule, cached activations); default: the paper's Appendix A.
    ray: SubTuning(blocks="auto") only: score each greedy step's candidates as Ray tasks
        (an address, "local", "auto" or HOST:PORT, or RayOptions).
    threads: torch's intra-op CPU threads for this call; torch's own count is restored after it.
    on_progress: called with each progress line (also logged at INFO on the "subtune" logger).

    Errors name these parameters (`blocks`, `max_blocks`, ...). The call leaves the process as it
    found it (torch's thread count, environment, signal handlers); OpenMP threads that spin while
    idle can slow training on a busy machine: set OMP_WAIT_POLICY=PASSIVE before importing torch
    (the command line does).
    """
    from subtune.training.options import DataOptions, TrainingOptions, check_method, ray_options

    began = time.perf_counter()
    method = check_method(method)
    training = _options(training, TrainingOptions, "training")
    data_options = _options(data_options, DataOptions, "data_options")
    ray = ray_options(ray)
    if ray is not None and not (method.mode == "subtune" and method.auto):
        raise SubtuneError("`ray` runs greedy selection's candidates as Ray tasks: it applies to SubTuning with "
                           "`blocks` auto only")
    from subtune.atomic import check_writable
    from subtune.delta import TASK_NAME
    from subtune.training.outputs import task_name_from

    out = check_writable(Path(output)) if output is not None else None
    rpath = report_path(report, out, ".train.json")
    if name is None:
        name = task_name_from(str(out)) if out is not None else "task"
    if method.mode != "full" and not TASK_NAME.match(name):
        raise SubtuneError(f"`name` {name!r}: expected letters, digits, '_' or '-', starting with a letter or '_'")
    if ray is not None:
        from subtune.sweeps.ray_executor import import_ray

        import_ray()  # before any work: Ray installed

    with process_state(threads):
        return _train(base, data, out, rpath, method=method, name=name, data_options=data_options,
                      training=training, ray=ray, on_progress=on_progress, began=began)


def _train(base, data, out, rpath, *, method, name, data_options, training, ray, on_progress, began) -> TrainResult:
    from subtune.models.blocks import parse_blocks
    from subtune.training.options import blocks_text
    from subtune.training.outputs import result_model, save_model

    base_model = _load_base(base)
    _, backbone = base_model.build()
    text = blocks_text(getattr(method, "blocks", None))
    chosen = parse_blocks(text, backbone) if text and text != "auto" else None
    trainer = _trainer(base_model, data, data_options, training, on_progress)
    train_ds, val_ds, test_ds, config = *_split_datasets(trainer), trainer.config
    path = None
    if method.mode == "linear":
        run = trainer.linear()
    elif method.mode == "full":
        run = trainer.full()
    elif method.mode == "lora":
        run = trainer.lora(chosen, rank=method.rank, alpha=method.alpha)
    elif method.mode == "head2toe":
        from subtune.training.head2toe import default_points

        run = trainer.head2toe(points=default_points(trainer.backbone, chosen), grid=method.tap_grid,
                               budgets=method.budgets, group_lasso=method.group_lasso)
    elif method.auto:
        greedy = dict(siamese=method.siamese, epsilon=method.greedy_epsilon, max_blocks=method.greedy_max_blocks,
                      on_progress=on_progress)
        run, path = _greedy_on_ray(trainer, ray=ray, **greedy) if ray else _greedy(trainer, **greedy)
    else:
        run = trainer.subtune(chosen, siamese=method.siamese)

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


def _options(value, cls, parameter: str):
    """None -> the defaults; an instance of `cls` -> checked; anything else refused."""
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise SubtuneError(f"`{parameter}`: expected {cls.__name__}(...), found {type(value).__name__}")
    return value.check()


@contextlib.contextmanager
def process_state(threads: int | None) -> Iterator[None]:
    """Run a training call with `threads` torch threads (None: as they are), and leave torch's
    thread count as it was found, whatever the call set on the way (greedy selection on Ray sets
    the workers' count for its last run)."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise SubtuneError(f"`threads` must be at least 1, found {threads!r}")
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _trainer(base_model, data, data_options, training, on_progress):
    """A Trainer on the data's splits (`_splits`), with the training configuration (epochs by the
    training split's size when not given); says the `data ...` progress line."""
    from subtune.training.options import data_summary
    from subtune.training.trainer import Trainer

    train, val, test_ds = _splits(data, base_model, data_options)
    config = training.config(len(train))
    say(on_progress, f"data {data_summary(train, val, test_ds)}")
    return Trainer(base_model, train, val, test_ds, config=config, cache_dir=training.cache_dir,
                   memory_budget=training.memory_budget)


def _split_datasets(trainer) -> tuple:
    """(train, val, test or None) of a Trainer."""
    return trainer.data["train"], trainer.data["val"], trainer.data.get("test")


def _splits(data, base, data_options):
    """(train, val, test or None) from a spec, or the loaded splits as given."""
    from subtune.training.data import ImageDataset
    from subtune.training.options import DataOptions

    if isinstance(data, (str, os.PathLike)):
        return data_options.load_splits(str(data), base)
    splits = list(data) if isinstance(data, (list, tuple)) else None
    if not splits or len(splits) not in (2, 3) or not all(isinstance(d, ImageDataset) for d in splits):
        raise SubtuneError("`data`: expected a dataset spec (e.g. imagefolder:DIR) or loaded splits (train, val) or "
                           f"(train, val, test), found {type(data).__name__}")
    if data_options != DataOptions():
        raise SubtuneError("`data_options` say how a dataset spec is read; loaded splits are used as they are: "
                           "drop `data_options`, or pass the spec")
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


def _greedy_on_ray(trainer, *, ray, siamese: bool, epsilon: float, max_blocks: int, on_progress):
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

    with RayExecutor(trainer, address=ray.cluster, cpus_per_run=ray.cpus_per_run,
                     gpus_per_run=ray.gpus_per_run) as ex:
        say(on_progress, f"running on {ex.describe()}")
        scorer = window_scorer(ex, seeds=[trainer.config.seed], siamese=siamese, on_run=show)
        path = greedy_select(None, trainer.backbone.num_blocks, epsilon=epsilon, max_blocks=max_blocks,
                             start_score=linear.val_accuracy, score_many=scorer)
    for line in path.describe():
        say(on_progress, line)
    torch.set_num_threads(ex.threads)  # as the workers ran it (train's process_state restores the count)
    result = trainer.subtune(path.selected, siamese=siamese, test=False)
    return trainer.evaluate_test(result), path
