"""`subtune-bench`: latency of a model file, of the four deployments of a base and its tasks
(--compare), or of each window of a finetuning profile against its accuracy (--profile)."""

from __future__ import annotations

import argparse

from subtune.commands.flag_values import IMAGE_SIZE_HELP, add_deprecated, image_size, int_list, refuse_unless

# the library's parameters spelt otherwise here
FLAGS = {"threads": "--intra-op-threads", "batches": "--batch", "batch": "--batch"}
RUNTIME_CHOICES = ("onnxruntime", "torch", "tensorrt")
PROVIDER_CHOICES = ("cpu", "cuda", "tensorrt")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("modes: subtune-bench MODEL.onnx|ENGINE.plan; subtune-bench --compare BASE TASK...; "
                "subtune-bench --profile PROFILE.json BASE [--budget-ms X]")
    p.add_argument("inputs", nargs="+", metavar="FILE", help="a model file; with --compare or --profile, a base file "
                   "(then task files, for --compare)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--compare", action="store_true",
                      help="time (a) base alone, (b) naive, (c) split sessions, (d) compiled graph side by side")
    mode.add_argument("--profile", metavar="JSON",
                      help="finetuning profile: plot accuracy against the added latency of each window")
    p.add_argument("--budget-ms", type=float, help="with --profile: name the most accurate window within this added latency")
    p.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1)")
    p.add_argument("--warmup", type=int, help="warm-up runs per variant (default 10; 300 with --paper-protocol)")
    p.add_argument("--iters", type=int, help="timed runs per repeat (default 30; 300 with --paper-protocol)")
    p.add_argument("--repeats", type=int, help="repeats (default 5; 10 with --paper-protocol)")
    p.add_argument("--paper-protocol", action="store_true", help="the paper's protocol: 300 warm-up, 10 x 300 runs")
    p.add_argument("--intra-op-threads", type=int, metavar="N",
                   help="the timed runtime's intra-op threads: ONNX Runtime's thread pool, or torch's with --runtime "
                        "torch (default: the cores this process may use)")
    add_deprecated(p, "--threads", "--intra-op-threads", "intra_op_threads", type=int)
    p.add_argument("--runtime", choices=RUNTIME_CHOICES,
                   help="--compare/--profile: where the variants run (default onnxruntime; a model file's suffix "
                        "picks its runtime)")
    p.add_argument("--provider", choices=PROVIDER_CHOICES, help="ONNX Runtime execution provider (default cpu)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="--runtime torch: where PyTorch runs (default cpu)")
    p.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay each shape from a CUDA graph")
    p.add_argument("--image-size", help=f"--compare/--profile: {IMAGE_SIZE_HELP}, the models' input (default: the base "
                                        "architecture's)")
    p.add_argument("--task-counts", help="--compare: compare the first k tasks for each k, e.g. 1,2,4 (default: all)")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    p.add_argument("--plot", metavar="PNG", help="--compare/--profile: write a figure")
    p.add_argument("--keep-samples", action="store_true", help="keep every run's time in the JSON")


def run(args: argparse.Namespace) -> int:
    """The flags that belong to one mode are checked here (parsing); the mode's work is one call
    to subtune.api (benchmark, benchmark_compare or benchmark_profile)."""
    from pathlib import Path

    from subtune.atomic import check_writable
    from subtune.benchmarking.harness import protocol_from_flags
    from subtune.errors import SubtuneError

    batches = int_list(args.batch, "--batch", positive=True)
    protocol = protocol_from_flags(args)
    if args.intra_op_threads is not None and args.intra_op_threads < 1:
        raise SubtuneError(f"--intra-op-threads must be at least 1, found {args.intra_op_threads}")
    refuse_unless(args, not args.profile, ["keep_samples"], "with --profile: a profile reports each window's medians")
    for path in (args.json, args.plot):
        if path:
            check_writable(path)
    if args.json and args.plot and Path(args.json).resolve() == Path(args.plot).resolve():
        raise SubtuneError(f"--json and --plot both name {args.json}; choose two files")
    if args.budget_ms is not None and not args.profile:
        raise SubtuneError("--budget-ms needs --profile PROFILE.json")
    if args.plot and not (args.compare or args.profile):
        raise SubtuneError("--plot applies to --compare and --profile")
    if args.task_counts and not args.compare:
        raise SubtuneError("--task-counts applies to --compare")
    common = dict(protocol=protocol, threads=args.intra_op_threads, json=args.json)
    if args.compare:
        result = _compare(args, batches, common)
    elif args.profile:
        result = _profile(args, batches, common)
    else:
        result = _model(args, batches, common)
    print(result.table())
    for path in result.files:
        print(f"wrote {path}")
    if args.profile and args.budget_ms is not None and result.result.chosen is None:
        cheapest = min(result.result.points, key=lambda p: p.added_ms)
        raise SubtuneError(f"no window adds at most {args.budget_ms:g} ms; the cheapest, blocks {cheapest.label}, "
                           f"adds {cheapest.added_ms:.3f} ms")
    return 0


def _model(args, batches, common):
    from subtune.api import benchmark
    from subtune.errors import SubtuneError

    if len(args.inputs) != 1:
        raise SubtuneError(f"expected one model file, found {len(args.inputs)} files; to compare a base and tasks, "
                           "add --compare")
    if args.image_size:
        raise SubtuneError("--image-size applies to --compare/--profile; a model file has its own input size")
    if args.runtime:
        raise SubtuneError("--runtime applies to --compare/--profile; a model file's suffix picks its runtime "
                           "(.onnx: ONNX Runtime, .plan: TensorRT)")
    return benchmark(args.inputs[0], batches=batches, provider=args.provider, cuda_graph=args.cuda_graph,
                     keep_samples=args.keep_samples, **common)


def _compare(args, batches, common):
    from subtune.api import benchmark_compare
    from subtune.errors import SubtuneError

    if len(args.inputs) < 2:
        raise SubtuneError("--compare needs a base file and at least one task file")
    counts = int_list(args.task_counts, "--task-counts", positive=True) if args.task_counts else None
    return benchmark_compare(args.inputs[0], args.inputs[1:], batches=batches, runtime=args.runtime or "onnxruntime",
                             provider=args.provider, device=args.device, cuda_graph=args.cuda_graph,
                             task_counts=counts, image_size=image_size(args.image_size),
                             keep_samples=args.keep_samples, plot=args.plot, **common)


def _profile(args, batches, common):
    from subtune.api import benchmark_profile
    from subtune.errors import SubtuneError

    if len(args.inputs) != 1:
        raise SubtuneError(f"--profile takes one base file, found {len(args.inputs)} files")
    if len(batches) != 1:
        raise SubtuneError(f"--profile measures at one batch size, found --batch {args.batch}")
    return benchmark_profile(args.inputs[0], args.profile, batch=batches[0], runtime=args.runtime or "onnxruntime",
                             provider=args.provider, device=args.device, cuda_graph=args.cuda_graph,
                             image_size=image_size(args.image_size), budget_ms=args.budget_ms, plot=args.plot,
                             **common)
