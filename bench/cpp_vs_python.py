"""The C++ CLI (`subtune-infer --bench`, ONNX Runtime's C++ API) against Python's
`InferenceSession.run` on the same compiled graph: same ONNX Runtime library version, same
session options (sequential, all graph optimisations, the same intra-op threads), the same
seeded random input shape, one interleaved run.

    python bench/cpp_vs_python.py [--model MODEL.onnx] [--batch 1,8] [--threads 2]
                                  [--warmup 20] [--iters 200] [--repeats 5] [--openvino]
                                  [-o out/cpp_vs_python]

Without --model it compiles a small graph (subtune:tiny_resnet base + two tasks, 32 px), where
the per-call overhead is a large share of each call: the case the comparison is about. Each
repeat runs one block of --iters timed calls per variant, the order rotating from repeat to
repeat; a C++ block is one `subtune-infer --bench --repeats 1` process (its own --warmup calls
first), a Python block runs --warmup untimed calls, then --iters timed ones (perf_counter_ns
around `run`, gc paused, as subtune-bench times). Reported per batch: the median of the
per-repeat medians of each variant, C++/Python, and Python - C++ (per call: the overhead C++
saves, the kernels being the same library's). --openvino adds a third variant,
`subtune-infer --runtime openvino` (f32 precision), where the build has OpenVINO.

Writes OUT/cpp_vs_python.{json,txt} with the machine, load average, CPU flags and versions.
Builds the C++ project into build/cpp-bench first when --cli is not given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from subtune.machine import cpu_flags

ROOT = Path(__file__).resolve().parents[1]


def build_cli(build_dir: Path) -> Path:
    cli = build_dir / "subtune-infer"
    gen = ["-G", "Ninja"] if subprocess.run(["which", "ninja"], capture_output=True).returncode == 0 \
        and not (build_dir / "Makefile").exists() else []
    for cmd in (["cmake", "-S", str(ROOT / "cpp"), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 "-DSUBTUNE_BUILD_TESTS=OFF", *gen],
                ["cmake", "--build", str(build_dir), "-j", "2", "--target", "subtune-infer"]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"cpp_vs_python: error: {' '.join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return cli


def tiny_graph(path: Path) -> Path:
    import dataclasses

    from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
    from subtune.compiler.plan import Plan
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", seed=0)
    _, bb = base.build()
    tasks = [synthetic_task(base, "t1", [5, 6], seed=1, backbone=bb), synthetic_task(base, "t2", [6, 7], seed=2, backbone=bb)]
    tasks = [dataclasses.replace(t, meta={**t.meta, "preprocess": {"image_size": [32, 32], "channels": 3,
                                                                   "mean": [0.485, 0.456, 0.406],
                                                                   "std": [0.229, 0.224, 0.225]}}) for t in tasks]
    plan = compile_plan(Plan(base, tasks, input_size=(32, 32)), CompileOptions(verify=False, check_tensorrt=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(serialize(plan))
    return path


def python_session(model: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])


def cpp_block(cli: Path, model: Path, batch: int, threads: int, warmup: int, iters: int,
              runtime: str = "onnxruntime") -> float:
    """One C++ repeat: a fresh subtune-infer process, its warm-up, then `iters` timed calls; the median (ms)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "bench.json"
        cmd = [str(cli), str(model), "--bench", "--batch", str(batch), "--threads", str(threads), "--warmup",
               str(warmup), "--iters", str(iters), "--repeats", "1", "--json", str(out), "--runtime", runtime]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            sys.exit(f"cpp_vs_python: error: {' '.join(cmd)}: {r.stderr.strip()}")
        return json.loads(out.read_text())["median_ms"]


def python_block(session, x: np.ndarray, warmup: int, iters: int) -> float:
    from subtune.benchmarking.harness import _timed_block

    feed = {session.get_inputs()[0].name: x}
    for _ in range(warmup):
        session.run(None, feed)
    return statistics.median(_timed_block(lambda: session.run(None, feed), iters))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="a compiled graph (default: a small one compiled here)")
    p.add_argument("--cli", type=Path, help="a built subtune-infer (default: build cpp/ into build/cpp-bench)")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for both sides (default 2)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--openvino", action="store_true",
                   help="also time subtune-infer --runtime openvino (needs a build with OpenVINO)")
    p.add_argument("-o", "--out", type=Path, default=Path("out/cpp_vs_python"))
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    if min(batches) < 1 or args.threads < 1 or args.iters < 1 or args.repeats < 1 or args.warmup < 0:
        sys.exit("cpp_vs_python: error: batches, --threads, --iters and --repeats must be at least 1, --warmup at least 0")
    args.out.mkdir(parents=True, exist_ok=True)

    from subtune.machine import machine_info
    from subtune.benchmarking.report import save_result, table

    cli = args.cli or build_cli(ROOT / "build" / "cpp-bench")
    model = args.model or tiny_graph(args.out / "tiny_model.onnx")
    if not model.is_file():
        sys.exit(f"cpp_vs_python: error: {model}: no such file; expected a graph from subtune-compile")
    session = python_session(model, args.threads)
    shape = session.get_inputs()[0].shape
    rows, results = [], []
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, shape[2], shape[3])).astype(np.float32)
        blocks = {"cpp": lambda: cpp_block(cli, model, batch, args.threads, args.warmup, args.iters),
                  "python": lambda: python_block(session, x, args.warmup, args.iters)}
        if args.openvino:
            blocks["cpp_openvino"] = lambda: cpp_block(cli, model, batch, args.threads, args.warmup, args.iters,
                                                       "openvino")
        names = list(blocks)
        samples: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.repeats):
            shift = r % len(names)  # the order rotates from repeat to repeat, as subtune-bench's harness does
            for name in names[shift:] + names[:shift]:
                samples[name].append(blocks[name]())
            print(f"batch {batch} repeat {r + 1}/{args.repeats}: "
                  + ", ".join(f"{n} {samples[n][-1]:.4f} ms" for n in names), file=sys.stderr)
        cpp, py = samples["cpp"], samples["python"]
        c, q = statistics.median(cpp), statistics.median(py)
        spread = lambda v: (max(v) - min(v)) / statistics.median(v)  # noqa: E731
        entry = {"batch": batch, "cpp_median_ms": c, "python_median_ms": q, "ratio_cpp_over_python": c / q,
                 "python_minus_cpp_ms": q - c, "cpp_repeat_medians_ms": cpp, "python_repeat_medians_ms": py,
                 "cpp_spread": spread(cpp), "python_spread": spread(py)}
        row = [str(batch), f"{c:.4f}", f"{q:.4f}", f"{c / q:.3f}", f"{(q - c) * 1000:.1f}",
               f"{spread(cpp) * 100:.1f}% / {spread(py) * 100:.1f}%"]
        if args.openvino:
            ov = samples["cpp_openvino"]
            entry.update({"cpp_openvino_median_ms": statistics.median(ov), "cpp_openvino_repeat_medians_ms": ov,
                          "ratio_cpp_openvino_over_python": statistics.median(ov) / q})
            row += [f"{statistics.median(ov):.4f}", f"{statistics.median(ov) / q:.3f}"]
        results.append(entry)
        rows.append(row)

    machine = machine_info(args.threads)
    machine["cpu_flags"] = cpu_flags()
    result = {"model": str(model), "cli": str(cli), "threads": args.threads,
              "protocol": {"warmup": args.warmup, "iters": args.iters, "repeats": args.repeats,
                           "interleaved": "one C++ block and one Python block per repeat, order alternating"},
              "machine": machine, "results": results}
    head = (f"C++ subtune-infer vs Python InferenceSession.run — {model.name}, ONNX Runtime "
            f"{machine['libraries'].get('onnxruntime', '?')} (both), {args.threads} threads, "
            f"{args.repeats} x {args.iters} calls (+{args.warmup} warm-up) per side, interleaved\n"
            f"{machine['cpu']}, {machine['cores']} cores, flags {' '.join(machine['cpu_flags']) or 'none'}, "
            f"load average {' '.join(f'{v:.2f}' for v in machine['load_average'] or [])}")
    header = ["batch", "C++ ms", "Python ms", "C++/Python", "saved us/call", "spread C++ / Py"]
    if args.openvino:
        header += ["C++ OpenVINO ms", "OpenVINO/Python"]
    text = head + "\n" + table(header, rows)
    print(text)
    for path in save_result(args.out, "cpp_vs_python", result, text):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
