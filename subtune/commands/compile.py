from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="base file (subtune.base/1)")
    p.add_argument("tasks", nargs="*", help="task delta files (subtune.task/1); outputs follow this order")
    p.add_argument("-o", "--output", required=True, help="model.onnx (CPU path) or engine.plan (TensorRT, needs a GPU)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--verify-batches", default="1,5", help="batch sizes to verify at (default 1,5; export uses 2)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max error relative to each output's scale")
    p.add_argument("--image-size", help="H or H,W (default: the tasks' training size, else the architecture's)")
    p.add_argument("--batch-range", default="1,8,32", help="TensorRT profile MIN,OPT,MAX (engine output only)")
    p.add_argument("--report", help="JSON report path (default: beside the output, .report.json)")
    p.add_argument("--prune", type=float, metavar="RATIO",
                   help="prune this fraction of the channels inside every task's tuned blocks (no recovery training; "
                        "`subtune prune --data` trains after pruning)")
    p.add_argument("--prune-norm", choices=["l1", "l2"], default="l2", help="with --prune: channel importance norm")
    p.add_argument("--prune-scope", choices=["local", "global"], default="local",
                   help="with --prune: the same fraction per layer (local) or ranked across a task's blocks (global)")
    p.add_argument("--round-to", type=int, help="with --prune: keep channel counts multiples of this (e.g. 8)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="int8: static quantisation in QDQ form (TensorRT-compatible), the base output unchanged by "
                        "tasks; fp16: half precision for GPU runtimes (default fp32)")
    p.add_argument("--calibration", metavar="DATA",
                   help="images to calibrate and check on, as `subtune train --data` takes them (fashion-mnist, "
                        "imagefolder:DIR, cifar10:DIR); needed for int8, optional for fp16")
    p.add_argument("--calibration-size", type=int, default=256, metavar="N",
                   help="images drawn from DATA (default 256)")
    p.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="how activation ranges are set from the calibration images (default minmax)")
    p.add_argument("--int8-target", choices=["tensorrt", "cpu"], default="tensorrt",
                   help="tensorrt: symmetric int8 that TensorRT and ONNX Runtime both run (default); cpu: uint8 "
                        "activations, every convolution fused by ONNX Runtime on x86, refused by TensorRT")
    p.add_argument("--max-accuracy-drop", type=float, default=0.03, metavar="X",
                   help="fail when a task whose classes DATA has loses more accuracy than this vs fp32 (default 0.03)")
    p.add_argument("--min-agreement", type=float, default=0.5, metavar="A",
                   help="fail when any output's top-1 agrees with fp32 on fewer images than this (default 0.5)")


def run(args: argparse.Namespace) -> int:
    from subtune.atomic import atomic_path, check_writable, write_text
    from subtune.errors import SubtuneError
    from subtune.runtimes.tensorrt import parse_batch_range, tensorrt_unavailable_reason

    out = Path(args.output)
    engine = out.suffix in (".plan", ".engine")
    if out.suffix != ".onnx" and not engine:
        raise SubtuneError(f"output {out}: expected a .onnx file, or .plan/.engine for TensorRT")
    check_writable(out)
    report_path = Path(args.report) if args.report else out.with_suffix(".report.json")
    check_writable(report_path)
    batch_range = parse_batch_range(args.batch_range) if engine else None
    if engine and (reason := tensorrt_unavailable_reason()):
        raise SubtuneError(f"cannot build {out}: {reason}; use -o model.onnx for the CPU path (ONNX Runtime)")
    verify_batches = _ints(args.verify_batches, "--verify-batches")
    image_size = _image_size(args.image_size) if args.image_size else None
    prune = _prune_options(args)
    precision = _precision_options(args)

    from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
    from subtune.compiler.plan import Plan
    from subtune.formats import load_base, load_task
    from subtune.progress import StepProgress

    base = load_base(args.base)
    tasks = [load_task(t) for t in args.tasks]
    plan = Plan(base, tasks, input_size=image_size)
    with StepProgress(f"compiling {len(tasks)} task(s)") as progress:
        compile_plan(plan, CompileOptions(verify=not args.no_verify, verify_batches=verify_batches,
                                          tolerance=args.tolerance, on_step=progress.step, prune=prune,
                                          precision=precision))
    data = serialize(plan)
    if len(data) >= 2**31:
        raise SubtuneError("the compiled graph exceeds ONNX's 2 GiB single-file limit; compile fewer tasks per graph")
    if engine:
        from subtune.runtimes.tensorrt import build_engine

        with atomic_path(out.with_suffix(".onnx")) as tmp_onnx:
            tmp_onnx.write_bytes(data)
            build_engine(tmp_onnx, out, input_size=plan.input_size, batch_range=batch_range)
    else:
        with atomic_path(out) as tmp:
            tmp.write_bytes(data)
    report = {"output": str(out), "bytes": len(data), "base": args.base, "tasks": args.tasks,
              "outputs": plan.output_names, "input_size": list(plan.input_size), **plan.report}
    write_text(report_path, json.dumps(report, indent=2))
    _print_summary(plan, out, len(data), report_path)
    return 0


def _print_summary(plan, out: Path, size: int, report_path: Path) -> None:
    print(f"wrote {out} ({size / 1e6:.1f} MB): outputs {', '.join(plan.output_names)}; "
          f"input images[batch, 3, {plan.input_size[0]}, {plan.input_size[1]}]")
    ver = plan.report.get("verification")
    if ver:
        print(f"verification (ONNX Runtime CPU vs PyTorch eager, tolerance {ver['tolerance']:.0e} relative):")
        print(f"  {'output':<20} {'batch':>5} {'max abs err':>12} {'relative':>10}  reference")
        for c in ver["checks"]:
            print(f"  {c['output']:<20} {c['batch']:>5} {c['max_abs_error']:>12.3e} {c['relative_error']:>10.2e}  {c['reference']}")
    else:
        print("verification skipped (--no-verify)")
    for name, pruned in plan.report.get("pruning", {}).get("tasks", {}).items():
        kept = pruned if isinstance(pruned, str) else (f"{pruned['params_kept']:.1%} of its tuned-block parameters and "
                                                       f"{pruned['flops_kept']:.1%} of their FLOPs kept")
        print(f"pruned task {name}: {kept}")
    _print_precision(plan.report.get("precision"))
    print(f"report: {report_path}")


def _print_precision(report: dict | None) -> None:
    if not report:
        return
    ver = report.get("verification")
    if not ver:
        print(f"{report['precision']} graph written without its check against fp32 (--no-verify)")
        return
    print(f"{report['precision']} vs the fp32 graph on {ver['images']}:")
    print(f"  {'output':<20} {'top-1 agree':>11} {'accuracy fp32 -> ' + report['precision']:>24} {'relative err':>12}")
    for o in ver["outputs"]:
        acc = f"{o['accuracy_fp32']:.1%} -> {o['accuracy']:.1%}" if o["accuracy"] is not None else "-"
        print(f"  {o['output']:<20} {o['agreement']:>11.1%} {acc:>24} {o['relative_error']:>12.2e}")
    if "base_output_vs_base_only" in ver:
        print(f"  base output with tasks vs the base-only int8 graph: max |difference| "
              f"{ver['base_output_vs_base_only']['max_abs_difference']:g}")


def _prune_options(args: argparse.Namespace):
    from subtune.errors import SubtuneError

    if args.prune is None:
        if args.round_to is not None:
            raise SubtuneError("--round-to applies to pruning: add --prune RATIO")
        return None
    from subtune.pruning.plan import PruneOptions

    return PruneOptions(args.prune, args.prune_norm, args.prune_scope, args.round_to).check()


def _precision_options(args: argparse.Namespace):
    from subtune.errors import SubtuneError

    if args.precision == "fp32":
        if args.calibration:
            raise SubtuneError("--calibration applies to --precision int8 or fp16; the default fp32 graph needs none")
        return None
    from subtune.quantization import PrecisionOptions

    return PrecisionOptions(args.precision, args.calibration, args.calibration_size, args.calibration_method,
                            args.int8_target, args.min_agreement, args.max_accuracy_drop).check()


def _ints(text: str, flag: str) -> tuple[int, ...]:
    from subtune.errors import SubtuneError

    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise SubtuneError(f"{flag} expects comma-separated integers, found {text!r}") from None
    if not values or min(values) < 1:
        raise SubtuneError(f"{flag} expects positive batch sizes, found {text!r}")
    return values


def _image_size(text: str) -> tuple[int, int]:
    values = _ints(text, "--image-size")
    if len(values) not in (1, 2):
        from subtune.errors import SubtuneError

        raise SubtuneError(f"--image-size expects H or H,W, found {text!r}")
    return (values[0], values[-1])
