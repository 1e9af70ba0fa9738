from __future__ import annotations

import argparse

from subtune.commands.values import int_list
from subtune.training.options import add_data_arguments, add_training_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="base file (subtune.base/1)")
    p.add_argument("-o", "--output", required=True, help="profile JSON to write")
    p.add_argument("--plot", help="PNG of the profile (default: beside the output, .png)")
    p.add_argument("--window", type=int, default=1, choices=[1, 2, 3], help="consecutive blocks per run (default 1)")
    p.add_argument("--starts", help="only windows starting at these blocks: FIRST-LAST or a list (default: all)")
    p.add_argument("--seeds", default=None, help="training seeds, e.g. 0,1,2: mean and std per window (default: --seed)")
    p.add_argument("--baselines", nargs="?", const="linear,full", default=None, metavar="LIST",
                   help="also baselines, one row each: a comma list of linear, head2toe, lora (LoRA on every block), "
                        "full (bare --baselines: linear,full); subtune-bench --profile reads them beside the windows")
    p.add_argument("--siamese", action="store_true", help="profile Siamese SubTuning (§5.1)")
    p.add_argument("--runs", help="folder of finished runs, one JSON each, written as each run ends; a rerun "
                                  "skips them (default: beside the output, .runs)")
    add_ray_arguments(p)
    add_data_arguments(p)
    add_training_arguments(p)


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("running on Ray (pip install 'subtune[ray]')")
    g.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="each run a Ray task: alone, a local Ray instance sized to this machine; 'auto' or "
                        "HOST:PORT, a running cluster (`ray start --head`)")
    g.add_argument("--ray-cpus-per-run", type=float, default=1,
                   help="CPUs each run declares, and its torch threads (default 1)")
    g.add_argument("--ray-gpus-per-run", type=float, default=0, help="GPUs each run declares (default 0)")


def run(args: argparse.Namespace) -> int:
    from subtune.training.options import prepare_runtime

    prepare_runtime(args)

    import contextlib
    import json
    import sys
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from subtune.atomic import check_writable, write_text
    from subtune.cluster import RunLog
    from subtune.errors import SubtuneError
    from subtune.formats import load_base
    from subtune.training.options import cache_options, data_summary, load_splits, train_config
    from subtune.training.plot import plot_profile
    from subtune.training.profile import profile_specs, profile_to_json, run_profile
    from subtune.training.trainer import Trainer

    out = check_writable(args.output)
    png = check_writable(Path(args.plot) if args.plot else out.with_suffix(".png"))
    if png == out:
        raise SubtuneError(f"--plot {png} is the JSON output; choose another file")
    seeds = int_list(args.seeds, "--seeds", distinct=True) if args.seeds else [args.seed]
    base = load_base(args.base)
    _, backbone = base.build()
    starts = _blocks(args.starts, backbone.num_blocks) if args.starts else None

    train, val, test = load_splits(args, base)
    config = train_config(args, len(train))
    print(f"data {data_summary(train, val, test)}")
    trainer = Trainer(base, train, val, test, config=config, **cache_options(args))

    def report(label: str, entry: dict) -> None:
        test_txt = f", test {entry['test_accuracy']:.4f}" if "test_accuracy" in entry else ""
        std = f" ± {entry['accuracy_std']:.4f}" if len(seeds) > 1 else ""
        tqdm.write(f"  {label:>13}: validation {entry['accuracy']:.4f}{std}{test_txt}  "
                   f"{entry['params']:>11,} params  {entry['seconds']:7.1f} s", file=sys.stdout)

    settings = {"base_fingerprint": base.fingerprint, "data": args.data, "training": config.to_meta(),
                "datasets": {s: d.info for s, d in (("train", train), ("val", val), ("test", test)) if d is not None}}
    runs = RunLog(Path(args.runs) if args.runs else out.with_suffix(".runs"), settings)
    done = runs.load()
    specs = profile_specs(backbone.num_blocks, window=args.window, seeds=seeds, starts=starts, siamese=args.siamese,
                          baselines=args.baselines)
    resumed = sum(s.key in done for s in specs)
    print(f"finetuning profile: window {args.window}, seeds {seeds}, {config.epochs} epochs "
          f"({'cached activations' if config.cached_training else 'full forward pass'}), {len(specs)} runs"
          + (f"; {resumed} already finished in {runs.folder}" if resumed else ""))
    finished = [resumed]  # runs of this profile on disk, for the line a Ctrl-C prints
    try:
        # On Ray, the executor turns SIGINT into KeyboardInterrupt only where Ray can stop cleanly, and
        # leaving it stops the local instance with all its processes (subtune.cluster.ray_executor, rule 5).
        with contextlib.ExitStack() as stack:
            executor = None
            if args.ray:
                from subtune.cluster import RayExecutor

                executor = stack.enter_context(RayExecutor(
                    trainer, address=None if args.ray == "local" else args.ray, cpus_per_run=args.ray_cpus_per_run,
                    gpus_per_run=args.ray_gpus_per_run))
            where = executor.describe() if executor else "serial, in this process"
            bar = stack.enter_context(tqdm(total=len(specs), initial=resumed, desc=f"profile [{where}]", unit="run",
                                           file=sys.stderr, disable=not sys.stderr.isatty()))
            threads = executor.threads if executor else torch.get_num_threads()
            print(f"runs: {where}; {threads} torch thread{'s' if threads > 1 else ''} per run", flush=True)

            def saved(spec, result) -> None:
                runs.save(spec, result)
                finished[0] += 1
                bar.update(1)

            prof = run_profile(trainer, window=args.window, seeds=seeds, starts=starts, siamese=args.siamese,
                               baselines=args.baselines, on_entry=report, executor=executor, done=done, on_run=saved)
    except KeyboardInterrupt:
        # one line, exit status 130; every finished run is already on disk (RunLog writes each as it ends)
        print(f"subtune profile: interrupted; {finished[0]} of {len(specs)} runs are saved in {runs.folder}: "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    context = {"base": args.base, "arch": base.arch, "base_fingerprint": base.fingerprint, "data": args.data,
               "datasets": {s: d.info for s, d in (("train", train), ("val", val), ("test", test)) if d is not None},
               "classes": train.classes, "preprocess": train.preprocess(), "training": config.to_meta(),
               "stages": backbone.stages}
    data = profile_to_json(prof, context=context)
    write_text(out, json.dumps(data, indent=2))
    plot_profile(data, png, stages=backbone.stages)
    best = data["best"]
    print(f"best window: blocks {best['blocks'][0]}-{best['blocks'][1]} (validation {best['accuracy']:.4f}); "
          f"{prof.seconds:.1f} s in all, {prof.cache_seconds:.1f} s caching frozen activations")
    print(f"wrote {out} and {png} (each run's result in {runs.folder})")
    return 0


def _blocks(text: str, n: int) -> list[int]:
    from subtune.errors import SubtuneError

    if "-" in text:
        try:
            lo, hi = (int(x) for x in text.split("-", 1))
        except ValueError:
            raise SubtuneError(f"--starts expects FIRST-LAST or a list, found {text!r}") from None
        return list(range(lo, hi + 1))
    return int_list(text, "--starts", distinct=True)
