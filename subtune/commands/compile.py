from __future__ import annotations

import argparse
import json
from pathlib import Path

from subtune.commands.flag_values import IMAGE_SIZE_HELP, image_size, int_list, refuse_unless

ENGINE_SUFFIXES = (".plan", ".engine")
PRECISION_FLAGS = ("calibration", "calibration_size", "calibration_method", "int8_target", "max_accuracy_drop",
                   "min_agreement", "check_size", "max_fallback", "sensitivity", "allow_slower")
INT8_FLAGS = ("calibration_method", "int8_target", "max_fallback", "sensitivity", "allow_slower")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="base file (subtune.base/1)")
    p.add_argument("tasks", nargs="*", help="task delta files (subtune.task/1); outputs follow this order")
    p.add_argument("-o", "--output", required=True,
                   help="model.onnx (CPU path; over 2 GiB of weights also model.onnx.data beside it), or engine.plan "
                        "(TensorRT, needs a GPU; the verified graph it is built from is written beside it as "
                        "engine.onnx, and the engine is run against it before it is kept)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the ONNX Runtime vs PyTorch check (the file's metadata then says subtune.verified=false)")
    p.add_argument("--no-tensorrt-check", action="store_true",
                   help="skip the static TensorRT-compatibility check (for graphs only ever run on the CPU path)")
    p.add_argument("--verify-batches", default="1,5", help="batch sizes to verify at (default 1,5; export uses 2)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max error relative to each output's scale")
    p.add_argument("--image-size", help=f"{IMAGE_SIZE_HELP}: the graph's input (default: the tasks' training size, "
                                        "else the architecture's)")
    p.add_argument("--batch-range", help="engine output only: the TensorRT engine's batch profile MIN,OPT,MAX "
                                         "(default 1,8,32); an .onnx graph takes any batch")
    p.add_argument("--report", help="JSON report path (default: beside the output, .report.json; must not be the "
                                    "output); written also when verification fails, with the failing table")
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
    p.add_argument("--int8-target", choices=["auto", "tensorrt", "cpu"], default="auto",
                   help="auto (default): cpu for ONNX Runtime on x86, tensorrt for a .plan engine or other hosts; "
                        "tensorrt: symmetric int8 that TensorRT and ONNX Runtime both run; cpu: uint8 activations, "
                        "every convolution fused by ONNX Runtime on x86, refused by TensorRT")
    p.add_argument("--max-accuracy-drop", type=float, default=0.01, metavar="X",
                   help="int8/fp16: each task with held-out labels (DATA's test split) may lose at most this accuracy "
                        "vs fp32; int8 keeps the most sensitive layers in fp32 until it does (default 0.01)")
    p.add_argument("--min-agreement", type=float, default=0.95, metavar="A",
                   help="outputs without labels (the base): top-1 agreement with fp32 on held-out images where fp32 "
                        "is confident (max softmax >= 0.5), at least this (default 0.95)")
    p.add_argument("--check-size", type=int, default=1000, metavar="N",
                   help="held-out images (DATA's test split) the reduced graph is checked on (default 1000)")
    p.add_argument("--max-fallback", type=int, metavar="K",
                   help="int8: keep at most K layers in fp32 to meet the targets (default: half of the quantised "
                        "layers; 0: plain int8)")
    p.add_argument("--sensitivity", action="store_true",
                   help="int8: measure every layer's sensitivity (the report's table, model.sensitivity.png) even when "
                        "plain int8 meets every target; without it, only when a fallback is searched (minutes for "
                        "ResNet-50)")
    p.add_argument("--task-select", action="store_true",
                   help="give the graph a second input `tasks` (bool [batch, k], one column per task in output order): "
                        "each image computes the base plus only the tasks it asks for; a task's output is NaN in the "
                        "rows that did not ask (docs/task-selection.md); .onnx output only")
    p.add_argument("--allow-slower", action="store_true",
                   help="int8 for ONNX Runtime CPU: keep the graph even when the compile's quick latency check finds "
                        "it slower than fp32 on this host (refused by default)")


def run(args: argparse.Namespace) -> int:
    from subtune.api import compile as compile_model
    from subtune.errors import VerificationError

    out = Path(args.output)
    engine = out.suffix in ENGINE_SUFFIXES
    refuse_unless(args, engine, ["batch_range"], f"for {out.name}: an .onnx graph takes any batch (the profile is a "
                  "TensorRT engine's); drop the flag, or write an engine (-o engine.plan)")
    refuse_unless(args, not args.no_verify, ["verify_batches", "tolerance"], "with --no-verify: verification is "
                  "skipped")
    batch_range = None
    if args.batch_range:
        from subtune.runtimes.tensorrt import parse_batch_range

        batch_range = parse_batch_range(args.batch_range)
    verify_batches = tuple(int_list(args.verify_batches, "--verify-batches", positive=True))
    options = dict(verify=not args.no_verify, verify_batches=verify_batches,
                   tolerance=args.tolerance, image_size=image_size(args.image_size),
                   report=args.report if args.report else True, prune=_prune_options(args),
                   precision=_precision_options(args), check_tensorrt=not args.no_tensorrt_check,
                   batch_range=batch_range, task_select=args.task_select, progress=True)
    try:
        result = compile_model(args.base, args.tasks, out, **options)
    except VerificationError as e:
        if getattr(e, "report_path", None):
            ver = json.loads(Path(e.report_path).read_text()).get("verification")
            if ver and ver.get("checks"):
                _print_verification(ver)
            print(f"no model written; the report with every check: {e.report_path}")
        raise
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    report, out, (h, w) = result.report, result.output, result.input_size
    what = "TensorRT engine, " if out.suffix in ENGINE_SUFFIXES else ""
    print(f"wrote {out} ({what}{result.bytes / 1e6:.1f} MB): outputs {', '.join(result.outputs)}; "
          f"input images[batch, 3, {h}, {w}]" + _mask_input(report.get("task_select")))
    for f in result.files[1:]:
        if f != result.report_path:
            print(f"  beside it: {f}, {f.stat().st_size / 1e6:.1f} MB: {_file_role(f, out)}")
    ver = report.get("verification")
    if ver:
        _print_verification(ver)
    else:
        print("verification skipped (--no-verify): the file's metadata says subtune.verified=false")
    for name, pruned in report.get("pruning", {}).get("tasks", {}).items():
        kept = pruned if isinstance(pruned, str) else (f"{pruned['params_kept']:.1%} of its tuned-block parameters and "
                                                       f"{pruned['flops_kept']:.1%} of their FLOPs kept")
        print(f"pruned task {name}: {kept}")
    _print_precision(report.get("precision"))
    engine = result.report.get("engine")
    if engine:
        worst = max((c["relative_error"] for c in engine["comparison"]["checks"]), default=0.0)
        batches = sorted({c["batch"] for c in engine["comparison"]["checks"]})
        print(f"engine vs the verified ONNX graph (ONNX Runtime CPU) at batch {', '.join(map(str, batches))}: "
              f"max relative error {worst:.2e} (tolerance {engine['comparison']['tolerance']:.0e})")
    if result.report_path:
        print(f"report: {result.report_path}")


def _mask_input(task_select: dict | None) -> str:
    if not task_select:
        return ""
    return (f" and {task_select['input']}[batch, {len(task_select['columns'])}] ({task_select['dtype']}: which tasks "
            f"each image asks for; a task's output is {task_select['fill']} where its column is false)")


def _print_verification(ver: dict) -> None:
    print(f"verification (ONNX Runtime CPU vs PyTorch eager, tolerance {ver['tolerance']:.0e} relative):")
    masks = "task_select" in ver
    mask_head = f" {'mask':<18} {'rows':>4}" if masks else ""
    print(f"  {'output':<20} {'batch':>5}{mask_head} {'max abs err':>12} {'relative':>10}  reference")
    for c in ver["checks"]:
        flag = "" if c.get("passed", True) else "  FAILED"
        mask = f" {c.get('mask', ''):<18} {c.get('rows', ''):>4}" if masks else ""
        print(f"  {c['output']:<20} {c['batch']:>5}{mask} {c['max_abs_error']:>12.3e} {c['relative_error']:>10.2e}  "
              f"{c['reference']}{flag}")
    if masks and ver.get("passed"):
        print(f"  under every mask ({', '.join(ver['task_select']['masks'])}): the base bit for bit the same, "
              "NaN exactly where a task was not asked for")


def _file_role(path: Path, out: Path) -> str:
    if path.name.endswith(".onnx.data"):
        return "the ONNX graph's weights (external data; keep the two files together)"
    if path.suffix == ".onnx" and out.suffix != ".onnx":
        return "the verified ONNX graph the engine was built from"
    return "written with it"


def _print_precision(report: dict | None) -> None:
    from subtune.quantization.plot import precision_summary

    for line in precision_summary(report):
        print(line)


def _prune_options(args: argparse.Namespace):
    refuse_unless(args, args.prune is not None, ("prune_norm", "prune_scope", "round_to"),
                  "without --prune: add --prune RATIO to prune the tasks, or drop the flag")
    if args.prune is None:
        return None
    from subtune.pruning.plan import PruneOptions

    return PruneOptions(args.prune, args.prune_norm, args.prune_scope, args.round_to).check()


def _precision_options(args: argparse.Namespace):
    refuse_unless(args, args.precision != "fp32", PRECISION_FLAGS,
                  "for the default fp32 graph: only with --precision int8 or fp16")
    refuse_unless(args, args.precision == "int8", INT8_FLAGS, "with --precision fp16: only with --precision int8")
    if args.precision == "fp32":
        return None
    from subtune.quantization import PrecisionOptions

    out = Path(args.output)
    return PrecisionOptions(args.precision, args.calibration, args.calibration_size, args.calibration_method,
                            args.int8_target, args.min_agreement, args.max_accuracy_drop, check_size=args.check_size,
                            max_fallback=args.max_fallback, fallback=args.max_fallback != 0,
                            sensitivity=args.sensitivity, allow_slower=args.allow_slower,
                            sensitivity_plot=str(out.with_suffix(".sensitivity.png"))
                            if args.precision == "int8" else None)
