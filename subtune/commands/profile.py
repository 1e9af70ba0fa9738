from __future__ import annotations

import argparse

from subtune.training.options import add_data_arguments, add_training_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="base file (subtune.base/1)")
    p.add_argument("-o", "--output", required=True, help="profile JSON to write")
    p.add_argument("--plot", help="PNG of the profile (default: beside the output, .png)")
    p.add_argument("--window", type=int, default=1, choices=[1, 2, 3], help="consecutive blocks per run (default 1)")
    p.add_argument("--starts", help="only windows starting at these blocks: FIRST-LAST or a list (default: all)")
    p.add_argument("--seeds", default=None, help="training seeds, e.g. 0,1,2: mean and std per window (default: --seed)")
    p.add_argument("--baselines", action="store_true", help="also the linear probe and full finetuning")
    p.add_argument("--siamese", action="store_true", help="profile Siamese SubTuning (§5.1)")
    add_data_arguments(p)
    add_training_arguments(p)


def run(args: argparse.Namespace) -> int:
    from subtune.training.options import prepare_runtime

    prepare_runtime(args)

    import json
    from pathlib import Path

    from subtune.atomic import check_writable, write_text
    from subtune.errors import SubtuneError
    from subtune.formats import load_base
    from subtune.training.options import cache_options, data_summary, load_splits, train_config
    from subtune.training.plot import plot_profile
    from subtune.training.profile import profile_to_json, run_profile
    from subtune.training.trainer import Trainer

    out = check_writable(args.output)
    png = check_writable(Path(args.plot) if args.plot else out.with_suffix(".png"))
    if png == out:
        raise SubtuneError(f"--plot {png} is the JSON output; choose another file")
    seeds = _ints(args.seeds, "--seeds") if args.seeds else [args.seed]
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
        print(f"  {label:>13}: validation {entry['accuracy']:.4f}{std}{test_txt}  "
              f"{entry['params']:>11,} params  {entry['seconds']:7.1f} s", flush=True)

    print(f"finetuning profile: window {args.window}, seeds {seeds}, {config.epochs} epochs "
          f"({'cached activations' if config.cached_training else 'full forward pass'})")
    prof = run_profile(trainer, window=args.window, seeds=seeds, starts=starts, siamese=args.siamese,
                       baselines=args.baselines, on_entry=report)
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
    print(f"wrote {out} and {png}")
    return 0


def _ints(text: str, flag: str) -> list[int]:
    from subtune.errors import SubtuneError

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SubtuneError(f"{flag} expects comma-separated integers, found {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise SubtuneError(f"{flag} expects distinct integers, found {text!r}")
    return values


def _blocks(text: str, n: int) -> list[int]:
    from subtune.errors import SubtuneError

    if "-" in text:
        try:
            lo, hi = (int(x) for x in text.split("-", 1))
        except ValueError:
            raise SubtuneError(f"--starts expects FIRST-LAST or a list, found {text!r}") from None
        return list(range(lo, hi + 1))
    return _ints(text, "--starts")
