"""Issue 6's acceptance table: fp32 vs INT8 multi-task graphs on ONNX Runtime (CPU), batch 1 and 8:
fp32 base, fp32 k-task graph, INT8 base, INT8 k-task graph (ratios to the fp32 base), per INT8
target; top-1 agreement with fp32 and accuracy per output, INT8 and FP16, on real images; and the
base output of the INT8 k-task graph against the INT8 base-only graph.

    python bench/quantized_latency.py      # ResNet-50 @224, 4 synthetic tasks on blocks 13-14, Fashion-MNIST
    python bench/quantized_latency.py --base eff.pt --tasks last.pt tail.pt mid.pt siam.pt --image-size 64
    python bench/quantized_latency.py --image-size 64 --iters 3 --repeats 2 --calibration-size 16 --eval-size 32

Synthetic tasks predict nothing, so they get agreement only; trained task files (`subtune
train`) whose classes the data has get accuracy too, measured on the data's test split.
Writes OUT/quantized_latency.{json,txt}; the JSON holds the machine, library versions and thread
count with every result.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from subtune.benchmarking.harness import Protocol, Timing, time_interleaved
from subtune.machine import machine_info
from subtune.benchmarking.report import context_line, save_result, table
from subtune.models.blocks import block_span

VARIANTS = ("fp32", "int8 tensorrt", "int8 cpu")


@dataclass
class LatencyRow:
    variant: str  # fp32, int8 tensorrt, int8 cpu
    graph: str  # base, or "4 tasks"
    timing: Timing
    vs_fp32_base: float  # latency / fp32 base latency at the same batch size


@dataclass
class OutputRow:
    precision: str  # int8 tensorrt, int8 cpu, fp16
    arithmetic: str  # what ran: ONNX Runtime's kernels, or QDQ as written (TensorRT's arithmetic)
    output: str
    agreement: float
    relative_error: float
    accuracy_fp32: float | None
    accuracy: float | None


@dataclass
class Result:
    machine: dict
    arch: str
    input_size: tuple[int, int]
    tasks: list[dict]
    calibration: str
    evaluation: str
    protocol: Protocol
    threads: int
    latency: list[LatencyRow] = field(default_factory=list)
    outputs: list[OutputRow] = field(default_factory=list)
    base_pinned: dict = field(default_factory=dict)  # precision/arithmetic -> max |base(k tasks) - base(alone)|
    seconds: dict = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="torchvision:resnet50", help="with synthetic tasks (no --base)")
    p.add_argument("--base", help="a base file; with --tasks: trained task files")
    p.add_argument("--tasks", nargs="*", default=[])
    p.add_argument("--num-tasks", type=int, default=4, help="synthetic tasks (no --tasks)")
    p.add_argument("--blocks", default="13-14", help="synthetic tasks' tuned blocks")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--data", default="fashion-mnist", help="calibration and evaluation images (`--data` forms)")
    p.add_argument("--calibration-size", type=int, default=256)
    p.add_argument("--eval-size", type=int, default=500, help="images from the data's test split")
    p.add_argument("--calibration-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--batch", default="1,8")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="intra-op threads (default: the cores this process may use)")
    p.add_argument("-o", "--out", default="out/quantized_latency")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)  # fail before the work, not after
    result = run(args)
    text = format_result(result)
    for path in save_result(args.out, "quantized_latency", result, text):
        print(f"wrote {path}", file=sys.stderr)
    print(text)
    return 0


def run(args) -> Result:
    import time

    from subtune.machine import usable_cores
    from subtune.formats import load_base, load_task
    from subtune.models import make_base
    from subtune.quantization import PrecisionOptions, reduce_precision
    from subtune.quantization.calibration import load_calibration_set, normalization
    from subtune.quantization.compare import agreement, base_output_difference, labelled_outputs, run_batches
    from subtune.quantization.int8 import quantize_int8
    from subtune.synthetic import synthetic_task

    size = (args.image_size, args.image_size)
    threads = args.threads or usable_cores()
    protocol = Protocol(args.warmup, args.iters, args.repeats)
    seconds = {}
    base = load_base(args.base) if args.base else make_base(args.arch, seed=0)
    model, backbone = base.build()
    if args.tasks:
        tasks = [load_task(t) for t in args.tasks]
    else:
        first, last = (int(b) for b in args.blocks.split("-"))
        tasks = [synthetic_task(base, f"t{i + 1}", list(range(first, last + 1)), seed=i + 1, backbone=backbone)
                 for i in range(args.num_tasks)]
    mean, std = normalization(base.arch, model, tasks)
    calibration = load_calibration_set(args.data, size=args.calibration_size, image_size=size, mean=mean, std=std)
    evaluation = _test_split(args.data, args.eval_size, size, mean, std)

    start = time.perf_counter()
    fp32 = {"base": _compile(base, [], size), f"{len(tasks)} tasks": _compile(base, tasks, size)}
    seconds["compile fp32 (both graphs)"] = round(time.perf_counter() - start, 1)
    multi = f"{len(tasks)} tasks"
    names = [v.name for v in fp32[multi].graph.outputs]
    labelled = labelled_outputs(tasks, evaluation)
    graphs = {("fp32", g): _bytes(m) for g, m in fp32.items()}
    refs = run_batches(graphs["fp32", multi], evaluation.images, names)
    result = Result(machine_info(threads), base.arch, size,
                    [{"name": t.name, "blocks": t.blocks, "synthetic": bool(t.meta.get("synthetic"))} for t in tasks],
                    calibration.source, evaluation.source, protocol, threads)
    for target in ("tensorrt", "cpu"):
        start = time.perf_counter()
        q = {g: quantize_int8(m, calibration, args.calibration_method, target) for g, m in fp32.items()}  # plain int8
        seconds[f"quantize int8 {target} (both graphs)"] = round(time.perf_counter() - start, 1)
        variant = f"int8 {target}"
        graphs.update({(variant, g): _bytes(r.model) for g, r in q.items()})
        ways = [False, True] if target == "tensorrt" else [False]  # emulate: QDQ as written, TensorRT's arithmetic
        for emulate in ways:
            arithmetic = "QDQ as written" if emulate else "ONNX Runtime kernels"
            gots = run_batches(graphs[variant, multi], evaluation.images, names, emulate_qdq=emulate)
            rows = agreement(refs, gots, names, {n: evaluation.labels for n in labelled})
            result.outputs += [OutputRow(variant, arithmetic, r.output, r.agreement, r.relative_error, r.accuracy_fp32,
                                         r.accuracy) for r in rows]
            result.base_pinned[f"{variant}, {arithmetic}"] = base_output_difference(
                graphs[variant, multi], graphs[variant, "base"], evaluation.images, emulate_qdq=emulate)
    fp16 = {g: _bytes(reduce_precision(m, PrecisionOptions("fp16").check(), calibration).model) for g, m in fp32.items()}
    rows = agreement(refs, run_batches(fp16[multi], evaluation.images, names), names,
                     {n: evaluation.labels for n in labelled})
    result.outputs += [OutputRow("fp16", "ONNX Runtime kernels", r.output, r.agreement, r.relative_error,
                                 r.accuracy_fp32, r.accuracy) for r in rows]
    result.base_pinned["fp16 (not pinned: float rounding)"] = base_output_difference(fp16[multi], fp16["base"],
                                                                                     evaluation.images)

    start = time.perf_counter()
    for batch in [int(b) for b in args.batch.split(",")]:
        feeds = {"images": np.random.default_rng(batch).standard_normal((batch, 3, *size), dtype=np.float32)}
        calls = {f"{v} / {g}": _call(data, feeds, threads) for (v, g), data in graphs.items()}
        timings = time_interleaved(calls, batch=batch, protocol=protocol, progress=f"timing batch {batch}")
        reference = timings["fp32 / base"].median_ms
        result.latency += [LatencyRow(*key.split(" / "), t, t.median_ms / reference) for key, t in timings.items()]
    seconds["timing"] = round(time.perf_counter() - start, 1)
    result.seconds = seconds
    return result


def _compile(base, tasks, size) -> ir.Model:
    from subtune.compiler.pipeline import CompileOptions, compile_plan
    from subtune.compiler.plan import Plan

    return compile_plan(Plan(base, list(tasks), input_size=size), CompileOptions(verify=False)).onnx


def _test_split(spec, n, size, mean, std):
    from subtune.quantization import CalibrationSet
    from subtune.training.data import load_dataset

    data = load_dataset(spec, "test", image_size=size, mean=mean, std=std, limit=n, seed=1)
    return CalibrationSet(data.images.numpy(), data.labels.numpy() if data.labelled else None,
                          list(data.classes) or None, f"{spec} (test split, {len(data)} images)")


def _bytes(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


def _call(model: bytes, feeds: dict, threads: int):
    from subtune.runtimes.onnxruntime import session_from_bytes

    session = session_from_bytes(model, threads=threads)
    return lambda: session.run(None, feeds)


def format_result(r: Result) -> str:
    runtime = {"runtime": "onnxruntime", "provider": "CPU", "intra_op_threads": r.threads}
    lines = [f"{r.arch} @{r.input_size[0]}, tasks {', '.join(t['name'] + ' ' + block_span(t['blocks']) for t in r.tasks)}",
             context_line(r.machine, runtime, r.protocol), "",
             "Latency (median ms; x: relative to the fp32 base at that batch size)"]
    rows = [[f"{row.variant} {row.graph}", str(row.timing.batch), f"{row.timing.median_ms:.2f}",
             f"{row.vs_fp32_base:.2f}x", "noisy" if row.timing.noisy else ""] for row in r.latency]
    lines += [table(["graph", "batch", "median ms", "vs fp32 base", ""], rows), "",
              f"Agreement with fp32 and accuracy on {r.evaluation} (calibrated on {r.calibration})"]
    rows = [[f"{o.precision} ({o.arithmetic})", o.output, f"{o.agreement:.1%}", f"{o.relative_error:.2e}",
             "-" if o.accuracy is None else f"{o.accuracy_fp32:.1%} -> {o.accuracy:.1%}"] for o in r.outputs]
    lines += [table(["precision", "output", "top-1 agree", "rel. error", "accuracy fp32 -> reduced"], rows), "",
              "Base output, k-task graph vs base-only graph (max |difference|):"]
    lines += [f"  {k}: {v:g}" for k, v in r.base_pinned.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
