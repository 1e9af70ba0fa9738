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
    from subtune.training.options import DataOptions, Method, RayOptions, TrainingOptions
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
            baselines: "bool | str | Iterable[str | Method] | None" = None, runs: str | os.PathLike | None = None,
            plot: bool | str | os.PathLike = True, data_options: "DataOptions | None" = None,
            training: "TrainingOptions | None" = None, ray: "RayOptions | str | None" = None,
            threads: int | None = None, on_progress: Callable[[str], None] | None = None,
            progress: bool = False) -> ProfileResult:
    """The finetuning profile of `base` (a path or a loaded BaseModel) on `data`.

    data: a dataset spec, read as `data_options` says (DataOptions), or loaded splits (train,
        val) or (train, val, test) from subtune.training.data.load_dataset (as for `subtune.train`).
    output: the profile JSON to write; None keeps it in memory (result.report), with no PNG
        unless `plot` is a path and no runs folder unless `runs` is given.
    window: consecutive blocks per SubTuning run (1, 2 or 3 on the command line); starts: only
        windows starting at these blocks (default all); seeds: training seeds, mean and std per
        window (default [training.seed]); siamese: Siamese SubTuning (§5.1).
    baselines: one row each beside the windows, with their default settings: True (Linear,
        Full), a comma list of linear, head2toe, lora (on every block), full, or a list of those
        names or option objects (Linear(), Head2Toe(), LoRA(), Full()).
    runs: the folder of finished runs (default: beside the output, `<stem>.runs`); a rerun with
        the same settings skips the runs in it.
    plot: True writes `<output stem>.png` beside the output, a path writes it there, False none.
    training: TrainingOptions (the schedule, cached activations); default: the paper's Appendix A.
    ray: each run a Ray task: an address ("local", "auto", HOST:PORT) or RayOptions (each run
        declares cpus_per_run CPUs, also its torch threads, and gpus_per_run GPUs).
    threads: torch's intra-op CPU threads for this call; torch's own count is restored after it.
    on_progress: called with each progress line (also logged at INFO on the "subtune" logger):
        the data, the plan, where the runs go, then one line per profile row as its seeds finish.
    progress: a progress bar on stderr (tqdm; off where stderr is not a terminal).

    Raises ProfileInterrupted (a KeyboardInterrupt) on Ctrl-C during the runs; every finished
    run is then on disk in the runs folder, and the same call again resumes. Like
    `subtune.train`, errors name these parameters and the call leaves the process as it found it.
    """
    from subtune.api._train import _options, process_state
    from subtune.training.options import DataOptions, TrainingOptions, ray_options

    training = _options(training, TrainingOptions, "training")
    data_options = _options(data_options, DataOptions, "data_options")
    ray = ray_options(ray)
    from subtune.atomic import check_writable
    from subtune.training.profile import baseline_names

    out = check_writable(Path(output)) if output is not None else None
    if plot is True:
        plot = out.with_suffix(".png") if out is not None else False
    png = check_writable(Path(plot)) if plot else None
    if png is not None and out is not None and (png == out or png.resolve() == out.resolve()):
        raise SubtuneError(f"`plot` {png} is the JSON `output`; choose another file")
    seed_list = _ints(seeds, "seeds") if seeds is not None else [training.seed]
    start_list = _ints(starts, "starts") if starts is not None else None
    baselines = baseline_names(_baseline_names(baselines))  # a one-line error for an unknown name, before any work
    if ray is not None:  # before any work: Ray installed
        from subtune.sweeps.ray_executor import import_ray

        import_ray()
    folder = Path(runs) if runs is not None else out.with_suffix(".runs") if out is not None else None
    if folder is not None:
        from subtune.sweeps import RunLog

        RunLog(folder, {})  # only its checks: a file, or a parent that cannot take the folder
    with process_state(threads):
        return _profile(base, data, out, png, folder, window=window, seed_list=seed_list, start_list=start_list,
                        siamese=siamese, baselines=baselines, data_options=data_options, training=training, ray=ray,
                        on_progress=on_progress, progress=progress)


def _baseline_names(baselines):
    """Names, or option objects with their default settings (what a baseline runs) -> names."""
    if baselines is None or isinstance(baselines, (bool, str)):
        return baselines
    from subtune.training.options import METHODS, is_default

    names = []
    for b in baselines:
        if isinstance(b, str):
            names.append(b)
        elif isinstance(b, tuple(METHODS.values())) and b.mode != "subtune":
            if not is_default(b):
                raise SubtuneError(f"`baselines`: {b!r} differs from the defaults, and a profile runs each baseline "
                                   "with its defaults (LoRA on every block); train it with subtune.train instead")
            names.append(b.mode)
        else:
            raise SubtuneError(f"`baselines`: expected linear, head2toe, lora, full or Linear(), Head2Toe(), LoRA(), "
                               f"Full(), found {b!r} (the windows are the SubTuning runs)")
    return names


def _profile(base, data, out, png, folder, *, window, seed_list, start_list, siamese, baselines, data_options,
             training, ray, on_progress, progress) -> ProfileResult:
    from subtune.api._train import _split_datasets, _trainer
    from subtune.training.profile import profile_specs

    base_model = _load_base(base)
    _, backbone = base_model.build()
    specs = profile_specs(backbone.num_blocks, window=window, seeds=seed_list, starts=start_list, siamese=siamese,
                          baselines=baselines)  # also checks that the windows fit
    trainer = _trainer(base_model, data, data_options, training, on_progress)
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
                baselines=baselines, resumed=resumed, ray=ray, on_progress=on_progress, progress=progress)

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


def _ints(values, parameter: str) -> list[int]:
    try:
        found = list(values)
    except TypeError:
        found = None
    if (not found or not all(isinstance(v, int) and not isinstance(v, bool) for v in found)
            or len(set(found)) != len(found)):
        raise SubtuneError(f"`{parameter}` expects distinct integers (e.g. [0, 1, 2]), found {values!r}")
    return found


def _run(trainer, specs, done: dict, runlog, *, window: int, seeds: list[int], starts, siamese: bool, baselines,
         resumed: int, ray, on_progress, progress: bool):
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
                    trainer, address=ray.cluster, cpus_per_run=ray.cpus_per_run, gpus_per_run=ray.gpus_per_run))
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
