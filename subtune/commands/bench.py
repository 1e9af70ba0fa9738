"""`subtune-bench`: latency of a model file, of the four deployments of a base and its tasks
(--compare), or of each window of a finetuning profile against its accuracy (--profile)."""

from __future__ import annotations

import argparse

from subtune.commands.values import image_size, int_list

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
    p.add_argument("--threads", type=int, help="intra-op threads (default: the cores this process may use)")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES,
                   help="--compare/--profile: where the variants run (default onnxruntime; a model file's suffix "
                        "picks its runtime)")
    p.add_argument("--provider", choices=PROVIDER_CHOICES, help="ONNX Runtime execution provider (default cpu)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="--runtime torch: where PyTorch runs (default cpu)")
    p.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay each shape from a CUDA graph")
    p.add_argument("--image-size", help="--compare/--profile: H or H,W (default: the base architecture's)")
    p.add_argument("--task-counts", help="--compare: compare the first k tasks for each k, e.g. 1,2,4 (default: all)")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    p.add_argument("--plot", metavar="PNG", help="--compare/--profile: write a figure")
    p.add_argument("--keep-samples", action="store_true", help="keep every run's time in the JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from subtune.atomic import check_writable
    from subtune.bench.harness import protocol_from_flags
    from subtune.errors import SubtuneError

    batches = int_list(args.batch, "--batch", positive=True)
    protocol = protocol_from_flags(args)
    if args.threads is not None and args.threads < 1:
        raise SubtuneError(f"--threads must be at least 1, found {args.threads}")
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
    if args.compare:
        return _compare(args, batches, protocol)
    if args.profile:
        return _profile(args, batches, protocol)
    return _model(args, batches, protocol)


def _model(args, batches, protocol) -> int:
    from subtune.bench.latency import bench_runner
    from subtune.bench.machine import usable_cores
    from subtune.bench.report import model_table, write_json
    from subtune.errors import SubtuneError
    from subtune.runtimes import ENGINE_SUFFIXES, runner_for_file

    if len(args.inputs) != 1:
        raise SubtuneError(f"expected one model file, found {len(args.inputs)} files; to compare a base and tasks, "
                           "add --compare")
    path = args.inputs[0]
    if path.endswith((".pt", ".pth")):
        raise SubtuneError(f"{path} is a subtune base/task file: time a compiled .onnx model, or use --compare BASE TASK...")
    if args.image_size:
        raise SubtuneError("--image-size applies to --compare/--profile; a model file has its own input size")
    if args.runtime:
        raise SubtuneError("--runtime applies to --compare/--profile; a model file's suffix picks its runtime "
                           "(.onnx: ONNX Runtime, .plan: TensorRT)")
    threads = args.threads or usable_cores()
    engine = path.endswith(ENGINE_SUFFIXES)
    runner = runner_for_file(path, provider=args.provider, threads=None if engine else threads,
                             cuda_graph=args.cuda_graph)
    result = bench_runner(runner, model=path, batches=batches, protocol=protocol, threads=threads,
                          keep_samples=args.keep_samples)
    print(model_table(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _compare(args, batches, protocol) -> int:
    from subtune.bench.compare import run_compare
    from subtune.bench.report import compare_table
    from subtune.errors import SubtuneError
    from subtune.formats import load_base, load_task

    if len(args.inputs) < 2:
        raise SubtuneError("--compare needs a base file and at least one task file")
    runtime = _runtime_spec(args, batches)
    counts = int_list(args.task_counts, "--task-counts", positive=True) if args.task_counts else None
    base = load_base(args.inputs[0])
    tasks = [load_task(t) for t in args.inputs[1:]]
    result = run_compare(base, tasks, batches=batches, protocol=protocol, runtime=runtime, task_counts=counts,
                         input_size=image_size(args.image_size), threads=args.threads, keep_samples=args.keep_samples)
    print(compare_table(result))
    _write_outputs(args, result, "plot_compare")
    return 0


def _profile(args, batches, protocol) -> int:
    from subtune.bench.report import tradeoff_table
    from subtune.bench.tradeoff import load_profile, measure_tradeoff
    from subtune.errors import SubtuneError
    from subtune.formats import load_base

    if len(args.inputs) != 1:
        raise SubtuneError(f"--profile takes one base file, found {len(args.inputs)} files")
    if len(batches) != 1:
        raise SubtuneError(f"--profile measures at one batch size, found --batch {args.batch}")
    runtime = _runtime_spec(args, batches)
    base = load_base(args.inputs[0])
    entries = load_profile(args.profile, arch=base.arch)
    result = measure_tradeoff(base, entries, batch=batches[0], protocol=protocol, runtime=runtime,
                              input_size=image_size(args.image_size), threads=args.threads, budget_ms=args.budget_ms)
    print(tradeoff_table(result))
    _write_outputs(args, result, "plot_tradeoff")
    if args.budget_ms is not None and result.chosen is None:
        cheapest = min(result.points, key=lambda p: p.added_ms)
        raise SubtuneError(f"no window adds at most {args.budget_ms:g} ms; the cheapest, blocks {cheapest.label}, "
                           f"adds {cheapest.added_ms:.3f} ms")
    return 0


def _write_outputs(args, result, plot_name: str) -> None:
    from subtune.bench import plots
    from subtune.bench.report import write_json

    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    if args.plot:
        getattr(plots, plot_name)(result, args.plot)
        print(f"wrote {args.plot}")


def _runtime_spec(args, batches: list[int]):
    from subtune.bench.variants import RuntimeSpec
    from subtune.errors import SubtuneError

    runtime = args.runtime or "onnxruntime"
    if args.provider and runtime != "onnxruntime":
        raise SubtuneError(f"--provider applies to --runtime onnxruntime, not {runtime}")
    if args.device and runtime != "torch":
        raise SubtuneError(f"--device applies to --runtime torch, not {runtime} (ONNX Runtime takes --provider)")
    if args.cuda_graph and runtime != "tensorrt":
        raise SubtuneError("--cuda-graph applies to --runtime tensorrt")
    if runtime == "tensorrt":
        from subtune.runtimes.tensorrt import tensorrt_unavailable_reason

        reason = tensorrt_unavailable_reason()
        if reason:
            raise SubtuneError(f"--runtime tensorrt: {reason}")
    # TensorRT engines get one profile spanning the timed batch sizes, tuned for the largest
    return RuntimeSpec(runtime, provider=args.provider or "cpu", device=args.device or "cpu",
                       cuda_graph=args.cuda_graph, batch_range=(min(batches), max(batches), max(batches)))
