"""`subtune.profile`: what `subtune profile` does. The finetuning profile (paper §2): every window
of consecutive blocks trained on its own (and, optionally, baselines beside them), with validation
accuracy, trainable parameters and time per window; writes the profile JSON and a PNG atomically.

Each finished run is written to a runs folder as it ends (subtune.sweeps.RunLog), so an
interrupted profile resumes: the same call again runs only what is missing. Runs go serially in
this process or, with `ray`, as Ray tasks (subtune.sweeps.RayExecutor). A Ctrl-C raises
ProfileInterrupted (a KeyboardInterrupt) saying how many runs are saved and where.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from subtune.api._common import _load_base, _where, say
from subtune.errors import SubtuneError

if TYPE_CHECKING:
    from subtune.models import BaseModel
    from subtune.training.data import ImageDataset
    from subtune.training.profile import Profile

log = logging.getLogger("subtune")


class ProfileInterrupted(KeyboardInterrupt):
    """A Ctrl-C (KeyboardInterrupt) during the runs: `saved` of `total` runs are on disk in `runs`
    (None when there is no runs folder); the same call again resumes from them."""

    def __init__(self, saved: int, total: int, runs: Path | None):
        super().__init__(f"{saved} of {total} runs are saved in {runs}")
        self.saved, self.total, self.runs = saved, total, runs


@dataclass
class ProfileResult:
    """What `profile` produced: the profile (entries, baselines, timings), the JSON it wrote and
    where (None when kept in memory), the PNG and the runs folder."""

    profile: "Profile" = field(repr=False)
    report: dict[str, Any]  # the profile JSON (subtune.profile/1), as written to `output`
    output: Path | None
    plot_path: Path | None
    runs: Path | None  # the folder of finished runs, one JSON each (None: not kept)

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.output, self.plot_path) if p is not None]

    @property
    def best(self) -> dict:
        """The window with the best validation accuracy: {"blocks": [first, last], "accuracy": ...}."""
        return self.report["best"]

    @property
    def entries(self) -> list[dict]:
        return self.report["entries"]

    @property
    def baselines(self) -> dict[str, dict]:
        return self.report["baselines"]


def profile(base: "str | os.PathLike | BaseModel", data: "str | Sequence[ImageDataset]",
            output: str | os.PathLike | None = None, *, window: int = 1, seeds: Sequence[int] | None = None,
            starts: Sequence[int] | None = None, siamese: bool = False,
            baselines: "bool | str | Iterable[str] | None" = None, runs: str | os.PathLike | None = None,
            ray: str | None = None, ray_cpus_per_run: float = 1, ray_gpus_per_run: float = 0,
            image_size: int | None = None, limit: int | None = None, val_split: float | None = None,
            data_seed: int = 0, label_map: str | dict | None = None, test: bool = False,
            test_limit: int | None = None, epochs: int | None = None, lr: float = 1e-3, weight_decay: float = 0.01,
            batch_size: int = 256, seed: int = 0, augment: str = "none", freeze_bn: bool = False,
            cache: bool = True, cache_dir: str | None = None, cache_memory: float | None = None,
            threads: int | None = None, plot: bool | str | os.PathLike = True,
            on_progress: Callable[[str], None] | None = None, progress: bool = False) -> ProfileResult:
    """The finetuning profile of `base` (a path or a loaded BaseModel) on `data`.

    data: a dataset spec as `subtune profile --data` takes it, or loaded splits (train, val) or
        (train, val, test) from subtune.training.data.load_dataset (as for `subtune.train`).
    output: the profile JSON to write; None keeps it in memory (result.report), with no PNG
        unless `plot` is a path and no runs folder unless `runs` is given.
    window: consecutive blocks per run (the command offers 1, 2 or 3); starts: only windows starting at these blocks
        (default all); seeds: training seeds, mean and std per window (default [seed]).
    baselines: True (linear, full), or a comma list / list of linear, head2toe, lora, full.
    runs: the folder of finished runs (default: beside the output, `<stem>.runs`); a rerun with
        the same settings skips the runs in it.
    plot: True writes `<output stem>.png` beside the output, a path writes it there, False none.
    ray: "local", "auto" or HOST:PORT: each run a Ray task declaring ray_cpus_per_run CPUs (also
        its torch threads) and ray_gpus_per_run GPUs.
    on_progress: called with each progress line (also logged at INFO on the "subtune" logger):
        the data, the plan, where the runs go, then one line per profile row as its seeds finish.
    progress: a progress bar on stderr (tqdm; off where stderr is not a terminal).
    The rest are the training options of `subtune profile --help` (defaults: the paper's Appendix A).

    Raises ProfileInterrupted (a KeyboardInterrupt) on Ctrl-C during the runs; every finished
    run is then on disk in the runs folder, and the same call again resumes.
    """
    from subtune.api._train import _prepare, _split_datasets, _trainer

    _prepare(threads)
    from subtune.atomic import check_writable
    from subtune.training.profile import baseline_names, profile_specs

    out = check_writable(Path(output)) if output is not None else None
    if plot is True:
        plot = out.with_suffix(".png") if out is not None else False
    png = check_writable(Path(plot)) if plot else None
    if png is not None and out is not None and (png == out or png.resolve() == out.resolve()):
        raise SubtuneError(f"--plot {png} is the JSON output; choose another file")
    seed_list = _ints(seeds, "--seeds") if seeds is not None else [seed]
    start_list = _ints(starts, "--starts") if starts is not None else None
    baselines = baseline_names(baselines)  # a one-line error for an unknown name, before any work
    if ray:  # before any work: Ray installed, and the resources each run declares
        from subtune.sweeps.ray_executor import import_ray

        import_ray()
        if ray_cpus_per_run <= 0 or ray_gpus_per_run < 0:
            raise SubtuneError("--ray-cpus-per-run must be positive and --ray-gpus-per-run non-negative")
    folder = Path(runs) if runs is not None else out.with_suffix(".runs") if out is not None else None
    if folder is not None:
        from subtune.sweeps import RunLog

        RunLog(folder, {})  # only its checks: a file, or a parent that cannot take the folder

    base_model = _load_base(base)
    _, backbone = base_model.build()
    specs = profile_specs(backbone.num_blocks, window=window, seeds=seed_list, starts=start_list, siamese=siamese,
                          baselines=baselines)  # also checks that the windows fit
    trainer = _trainer(base_model, data, image_size=image_size, limit=limit, val_split=val_split, data_seed=data_seed,
                       label_map=label_map, test=test, test_limit=test_limit, epochs=epochs, lr=lr,
                       weight_decay=weight_decay, batch_size=batch_size, seed=seed, augment=augment,
                       freeze_bn=freeze_bn, cache=cache, cache_dir=cache_dir, cache_memory=cache_memory,
                       on_progress=on_progress)
    train, val, test_ds, config = *_split_datasets(trainer), trainer.config

    data_spec = str(data) if isinstance(data, (str, os.PathLike)) else train.info.get("spec")
    datasets = {s: d.info for s, d in (("train", train), ("val", val), ("test", test_ds)) if d is not None}
    runlog, done = None, {}
    if folder is not None:
        from subtune.sweeps import RunLog

        runlog = RunLog(folder, {"base_fingerprint": base_model.fingerprint, "data": data_spec,
                                 "training": config.to_meta(), "datasets": datasets})
        done = runlog.load()
    resumed = sum(s.key in done for s in specs)
    say(on_progress, f"finetuning profile: window {window}, seeds {seed_list}, {config.epochs} epochs "
                     f"({'cached activations' if config.cached_training else 'full forward pass'}), {len(specs)} runs"
                     + (f"; {resumed} already finished in {folder}" if resumed else ""))
    prof = _run(trainer, specs, done, runlog, window=window, seeds=seed_list, starts=start_list, siamese=siamese,
                baselines=baselines, resumed=resumed, ray=ray, cpus_per_run=ray_cpus_per_run,
                gpus_per_run=ray_gpus_per_run, on_progress=on_progress, progress=progress)

    from subtune.training.profile import profile_to_json

    context = {"base": _where(base), "arch": base_model.arch, "base_fingerprint": base_model.fingerprint,
               "data": data_spec, "datasets": datasets, "classes": train.classes, "preprocess": train.preprocess(),
               "training": config.to_meta(), "stages": backbone.stages}
    report = profile_to_json(prof, context=context)
    if out is not None:
        from subtune.atomic import write_text

        write_text(out, json.dumps(report, indent=2))
    if png is not None:
        from subtune.training.plot import plot_profile

        plot_profile(report, png, stages=backbone.stages)
    log.info("finetuning profile: %d runs; wrote %s", len(specs),
             ", ".join(str(p) for p in (out, png) if p is not None) or "nothing")
    return ProfileResult(prof, report, out, png, folder)


# --------------------------------------------------------------------------- helpers


def _ints(values, flag: str) -> list[int]:
    try:
        found = list(values)
    except TypeError:
        found = None
    if (not found or not all(isinstance(v, int) and not isinstance(v, bool) for v in found)
            or len(set(found)) != len(found)):
        raise SubtuneError(f"{flag} expects distinct integers (e.g. [0, 1, 2]), found {values!r}")
    return found


def _run(trainer, specs, done: dict, runlog, *, window: int, seeds: list[int], starts, siamese: bool, baselines,
         resumed: int, ray: str | None, cpus_per_run: float, gpus_per_run: float, on_progress, progress: bool):
    """The runs, serially or on Ray, each saved as it ends; a Ctrl-C becomes ProfileInterrupted."""
    import torch
    from tqdm import tqdm

    from subtune.training.profile import run_profile

    def show(line: str) -> None:
        if progress:  # the bar is cleared for the line and redrawn below it
            with tqdm.external_write_mode(file=sys.stdout):
                say(on_progress, line)
        else:
            say(on_progress, line)

    def report(label: str, entry: dict) -> None:
        test_txt = f", test {entry['test_accuracy']:.4f}" if "test_accuracy" in entry else ""
        std = f" ± {entry['accuracy_std']:.4f}" if len(seeds) > 1 else ""
        show(f"  {label:>13}: validation {entry['accuracy']:.4f}{std}{test_txt}  "
             f"{entry['params']:>11,} params  {entry['seconds']:7.1f} s")

    finished = [resumed]  # runs of this profile on disk, for ProfileInterrupted
    try:
        # On Ray, the executor turns SIGINT into KeyboardInterrupt only where Ray can stop cleanly, and
        # leaving it stops the local instance with all its processes (subtune.sweeps.ray_executor, rule 5).
        with contextlib.ExitStack() as stack:
            executor = None
            if ray:
                from subtune.sweeps import RayExecutor

                executor = stack.enter_context(RayExecutor(
                    trainer, address=None if ray == "local" else ray, cpus_per_run=cpus_per_run,
                    gpus_per_run=gpus_per_run))
            where = executor.describe() if executor else "serial, in this process"
            bar = stack.enter_context(tqdm(total=len(specs), initial=resumed, desc=f"profile [{where}]", unit="run",
                                           file=sys.stderr, disable=None if progress else True))
            threads = executor.threads if executor else torch.get_num_threads()
            show(f"runs: {where}; {threads} torch thread{'s' if threads > 1 else ''} per run")

            def saved(spec, result) -> None:
                if runlog is not None:
                    runlog.save(spec, result)
                    finished[0] += 1
                bar.update(1)

            return run_profile(trainer, window=window, seeds=seeds, starts=starts, siamese=siamese,
                               baselines=baselines, on_entry=report, executor=executor, done=done, on_run=saved)
    except KeyboardInterrupt as e:
        # every finished run is already on disk (RunLog writes each as it ends)
        saved_runs = finished[0] if runlog is not None else 0
        log.info("interrupted: %d of %d runs are saved in %s", saved_runs, len(specs),
                 runlog.folder if runlog is not None else None)
        raise ProfileInterrupted(saved_runs, len(specs), runlog.folder if runlog is not None else None) from e
