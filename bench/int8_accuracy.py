"""Issue 15's acceptance table: fp32, plain INT8 and mixed INT8 (the most sensitive layers kept in
fp32 until every output meets its target) on held-out images, per output, with latency ratios to
the fp32 base alone at batch 1 and 8, in one run, on

  main      the main job's graph: EfficientNet-Lite0 + fashion10 + coarse4 at 64 px (task files from
            `bash scripts/main_job.sh`, or `EPOCHS=3 OUT=runs/int8_main bash scripts/main_job.sh`)
  resnet50  ResNet-50 (random-weight base: `subtune base` without weights) with 4 tasks on blocks 13-14
            trained here on Fashion-MNIST at 64 px (accuracy); latency at --resnet50-latency-size (224),
            the fallbacks chosen at 64 px applied by layer name

    python bench/int8_accuracy.py --main-dir runs/int8_main --threads 2
    python bench/int8_accuracy.py --parts main --check-size 300 --iters 5 --repeats 2   # quicker

Held-out images: the Fashion-MNIST test split (no task trained on it; calibration draws from the
training pool). Accuracy for the tasks (coarse4 scored on its 4 coarse classes), agreement with
fp32 for the base (where fp32 is confident, max softmax >= 0.5), top-5 overlap and relative logit
error. Writes OUT/int8_accuracy.{json,txt} and OUT/<part>_sensitivity.png; the JSON holds the
machine, library versions, thread count and load average with every result.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from subtune.benchmarking.harness import Protocol, time_interleaved
from subtune.machine import machine_info
from subtune.benchmarking.report import save_result, table

COARSE4 = "tops=0,2,4,6;bottoms=1,3;footwear=5,7,9;bags=8"
R50_TASKS = [  # name, label map (None: the ten classes)
    ("fashion10", None),
    ("coarse4", COARSE4),
    ("footwear", "sandal=5;sneaker=7;boot=9"),
    ("upper", "tshirt=0;pullover=2;dress=3;coat=4;shirt=6"),
]


@dataclass
class Section:
    name: str
    arch: str
    input_size: list[int]
    latency_size: list[int]
    target: str
    target_reason: str
    check: dict
    calibration: str
    outputs: list[dict] = field(default_factory=list)  # variant, output, accuracy_fp32, accuracy, ...
    fallback: dict = field(default_factory=dict)
    base_pinned: dict = field(default_factory=dict)
    latency: list[dict] = field(default_factory=list)
    sensitivity_top: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


@dataclass
class Result:
    machine: dict
    threads: int
    protocol: Protocol
    load_average_start: list[float]
    sections: list[Section] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="main,resnet50")
    p.add_argument("--main-dir", default="runs/main", help="base.pt, fashion10.pt, coarse4.pt of the main job")
    p.add_argument("--resnet50-dir", default="runs/int8_resnet50", help="where the ResNet-50 tasks are trained/kept")
    p.add_argument("--resnet50-latency-size", type=int, default=224)
    p.add_argument("--train-limit", type=int, default=500)
    p.add_argument("--train-epochs", type=int, default=5)
    p.add_argument("--target", default="auto", choices=["auto", "cpu", "tensorrt"])
    p.add_argument("--calibration-size", type=int, default=256)
    p.add_argument("--check-size", type=int, default=1000)
    p.add_argument("--max-accuracy-drop", type=float, default=0.01)
    p.add_argument("--min-agreement", type=float, default=0.95)
    p.add_argument("--batch", default="1,8")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-o", "--out", default="out/int8_accuracy")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)  # fail before the work, not after
    result = Result(machine_info(args.threads), args.threads, Protocol(args.warmup, args.iters, args.repeats),
                    list(os.getloadavg()))
    parts = args.parts.split(",")
    if "main" in parts:
        result.sections.append(main_section(args))
    if "resnet50" in parts:
        result.sections.append(resnet50_section(args))
    text = format_result(result)
    for path in save_result(args.out, "int8_accuracy", result, text):
        print(f"wrote {path}", file=sys.stderr)
    print(text)
    return 0


def main_section(args) -> Section:
    from subtune.formats import load_base, load_task

    d = Path(args.main_dir)
    missing = [f for f in ("base.pt", "fashion10.pt", "coarse4.pt") if not (d / f).is_file()]
    if missing:
        sys.exit(f"{d}: missing {', '.join(missing)}; run `bash scripts/main_job.sh` (or EPOCHS=3 OUT={d} ...)")
    base = load_base(d / "base.pt")
    tasks = [load_task(d / "fashion10.pt"), load_task(d / "coarse4.pt")]
    return measure("main", base, tasks, (64, 64), (64, 64), args)


def resnet50_section(args) -> Section:
    from subtune.formats import load_base, load_task

    d = Path(args.resnet50_dir)
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "base.pt").is_file():
        _run(["subtune", "base", "--arch", "torchvision:resnet50", "--seed", "0", "-o", str(d / "base.pt")])
    for name, label_map in R50_TASKS:
        if not (d / f"{name}.pt").is_file():
            cmd = ["subtune", "train", str(d / "base.pt"), "--data", "fashion-mnist", "--limit", str(args.train_limit),
                   "--image-size", "64", "--epochs", str(args.train_epochs), "--batch-size", "32", "--blocks", "13-14",
                   "--name", name,
                   "-o", str(d / f"{name}.pt")]
            _run(cmd + (["--label-map", label_map] if label_map else []))
    base = load_base(d / "base.pt")
    tasks = [load_task(d / f"{name}.pt") for name, _ in R50_TASKS]
    size = args.resnet50_latency_size
    return measure("resnet50", base, tasks, (64, 64), (size, size), args)


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def _compile(base, tasks, size) -> ir.Model:
    from subtune.compiler.pipeline import CompileOptions, compile_plan
    from subtune.compiler.plan import Plan

    return compile_plan(Plan(base, list(tasks), input_size=size), CompileOptions(verify=False)).onnx


def _bytes(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


def measure(name, base, tasks, size, latency_size, args) -> Section:
    from subtune.quantization import PrecisionOptions, reduce_precision
    from subtune.quantization.base_stream import extract_base_stream
    from subtune.quantization.compare import base_output_difference, compare_output, run_batches
    from subtune.quantization.int8 import quantize_int8
    from subtune.quantization.mixed import fall_back_layers
    from subtune.quantization.plot import plot_sensitivity

    seconds = {}
    common = dict(calibration_size=args.calibration_size, int8_target=args.target, check_size=args.check_size,
                  min_agreement=args.min_agreement, max_accuracy_drop=args.max_accuracy_drop, measure_latency=False)
    plain_opts = PrecisionOptions("int8", "fashion-mnist", fallback=False, sensitivity=False, **common).check()
    # the sensitivity table is part of this bench's output, also where plain int8 meets the targets
    mixed_opts = PrecisionOptions("int8", "fashion-mnist", sensitivity=True, **common).check()
    model, _ = base.build()
    start = time.perf_counter()
    fp32 = _compile(base, tasks, size)
    seconds["compile fp32"] = round(time.perf_counter() - start, 1)
    cal = plain_opts.calibration_set(base.arch, model, tasks, size)
    check = cal.check
    start = time.perf_counter()
    plain = reduce_precision(fp32, plain_opts, cal, tasks)
    seconds["int8 plain"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    mixed = reduce_precision(fp32, mixed_opts, cal, tasks)
    seconds["int8 mixed (sensitivity + greedy)"] = round(time.perf_counter() - start, 1)
    emulate = plain_opts.int8_target == "tensorrt"
    names = [v.name for v in fp32.graph.outputs]
    refs = run_batches(_bytes(fp32), check.images, names)
    section = Section(name, base.arch, list(size), list(latency_size), plain_opts.int8_target,
                      plain_opts.int8_target_reason, check.to_json(), cal.source)
    for variant, graph in (("fp32", None), ("int8", plain), ("int8 mixed", mixed)):
        gots = refs if graph is None else run_batches(_bytes(graph.model), check.images, names, emulate_qdq=emulate)
        for out, ref, got in zip(names, refs, gots):
            row = compare_output(out, ref, got, check.labels.get(out)).to_json()
            section.outputs.append({"variant": variant, **row})
        if graph is not None:
            section.base_pinned[variant] = base_output_difference(_bytes(graph.model), _bytes(graph.base_only),
                                                                  check.images, emulate_qdq=emulate)
    fb = mixed.report["mixed"]["fallback"]
    section.fallback = {k: fb[k] for k in ("layers", "labels", "passed", "max_fallback", "base_path_layers",
                                           "evaluations")}
    section.fallback["units"] = mixed.report["mixed"]["units"]
    section.fallback["cost"] = mixed.report["mixed"]["cost"]  # seconds, sessions, evaluations of the search
    section.sensitivity_top = [{"label": s["label"], "op_type": s["op_type"],
                                "relative_logit_error": s["relative_logit_error"]}
                               for s in mixed.report["mixed"]["sensitivity"]["layers"][:15]]
    plot_sensitivity(mixed.report, Path(args.out) / f"{name}_sensitivity.png")

    # latency: the same graphs, or (resnet50) recompiled at the latency size with the same fallbacks
    start = time.perf_counter()
    if tuple(latency_size) == tuple(size):
        graphs = {"fp32 base": extract_base_stream(fp32).model, "fp32": fp32, "int8": plain.model,
                  "int8 mixed": mixed.model, "int8 base": plain.base_only}
    else:
        from subtune.quantization.calibration import load_calibration_set, normalization

        fp32_l = _compile(base, tasks, latency_size)
        mean, std = normalization(base.arch, model, tasks)
        cal_l = load_calibration_set("fashion-mnist", size=min(64, args.calibration_size), image_size=latency_size,
                                     mean=mean, std=std)
        q = quantize_int8(fp32_l, cal_l, "minmax", plain_opts.int8_target)
        mixed_l, _, matched = fall_back_layers(fp32_l, q.model, q.base_only, fb["labels"])
        section.fallback["matched_at_latency_size"] = len(matched)
        graphs = {"fp32 base": extract_base_stream(fp32_l).model, "fp32": fp32_l, "int8": q.model,
                  "int8 mixed": mixed_l, "int8 base": q.base_only}
    seconds["latency graphs"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    for batch in [int(b) for b in args.batch.split(",")]:
        feeds = {"images": np.random.default_rng(batch).standard_normal((batch, 3, *latency_size), dtype=np.float32)}
        calls = {k: _call(_bytes(m), feeds, args.threads) for k, m in graphs.items()}
        load = list(os.getloadavg())
        timings = time_interleaved(calls, batch=batch, protocol=Protocol(args.warmup, args.iters, args.repeats),
                                   progress=f"{name}: timing batch {batch}")
        ref = timings["fp32 base"].median_ms
        section.latency += [{"graph": k, "batch": batch, "median_ms": t.median_ms, "spread": t.spread,
                             "vs_fp32_base": t.median_ms / ref, "load_average": load} for k, t in timings.items()]
    seconds["timing"] = round(time.perf_counter() - start, 1)
    section.seconds = seconds
    return section


def _call(model: bytes, feeds: dict, threads: int):
    from subtune.runtimes.onnxruntime import session_from_bytes

    session = session_from_bytes(model, threads=threads)
    return lambda: session.run(None, feeds)


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def format_result(r: Result) -> str:
    m = r.machine
    lines = [f"{m.get('cpu', '?')}, {r.threads} threads, load average at start {r.load_average_start[0]:.2f}; "
             f"warm-up {r.protocol.warmup}, {r.protocol.iters} iterations x {r.protocol.repeats} repeats, interleaved"]
    for s in r.sections:
        lines += ["", f"== {s.name}: {s.arch} @{s.input_size[0]} px, int8 target {s.target} ({s.target_reason})",
                  f"held out: {s.check['source']} (held out: {s.check['held_out']}); calibration: {s.calibration}",
                  f"mixed: {s.fallback['layers']} of {s.fallback['units']} quantised layers in fp32 "
                  f"({s.fallback['base_path_layers']} on the base path), targets met: {s.fallback['passed']}",
                  "base output with tasks vs base-only graph, max |difference|: "
                  + ", ".join(f"{k} {v:g}" for k, v in s.base_pinned.items()), ""]
        rows = []
        for o in s.outputs:
            acc = "-" if o["accuracy"] is None else f"{o['accuracy']:.1%}"
            rows.append([o["variant"], o["output"], acc, _pct(o["confident_agreement"]), str(o["confident_images"]),
                         f"{o['top5_overlap']:.3f}", f"{o['relative_logit_error']:.3f}"])
        lines.append(table(["variant", "output", "held-out acc", "conf. agree", "conf. n", "top-5 overlap",
                            "rel. logit err"], rows))
        lines += ["", f"latency @{s.latency_size[0]} px (median ms; x the fp32 base alone at that batch)"]
        rows = [[x["graph"], str(x["batch"]), f"{x['median_ms']:.2f}", f"{x['vs_fp32_base']:.2f}x",
                 f"{x['spread']:.1%}"] for x in s.latency]
        lines.append(table(["graph", "batch", "median ms", "vs fp32 base", "spread"], rows))
        lines += ["", "most sensitive layers (relative logit error, only that layer in int8):"]
        for x in s.sensitivity_top[:8]:
            lines.append(f"  {x['label']:<44} " + " ".join(f"{k} {v:.3f}" for k, v in x["relative_logit_error"].items()))
        lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in s.seconds.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
