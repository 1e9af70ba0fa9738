"""A CPU-only install must import the runtimes and the benchmark package, and parse bench
arguments, without loading any runtime or heavy library (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "onnxruntime", "tensorrt", "onnx", "onnx_ir", "onnxscript", "polygraphy", "matplotlib", "numpy",
         "tqdm", "timm", "torchvision")

LIGHT_MODULES = [
    "subtune.runtimes", "subtune.runtimes.base", "subtune.runtimes.onnxruntime", "subtune.runtimes.tensorrt",
    "subtune.runtimes.pytorch", "subtune.benchmarking", "subtune.benchmarking.harness", "subtune.machine",
    "subtune.benchmarking.report", "subtune.benchmarking.plots", "subtune.benchmarking.costmodel", "subtune.benchmarking.latency",
    "subtune.benchmarking.overhead", "subtune.commands.bench",
]


def _loaded_after(code: str) -> list[str]:
    probe = code + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_runtimes_and_bench_loads_nothing_heavy():
    assert _loaded_after("\n".join(f"import {m}" for m in LIGHT_MODULES)) == []


def test_parsing_bench_arguments_loads_nothing_heavy():
    code = textwrap.dedent("""
        from subtune.cli import build_parser
        for argv in (["bench", "m.onnx", "--batch", "1,8", "--intra-op-threads", "2"],
                     ["bench", "--compare", "b.pt", "t1.pt", "--runtime", "tensorrt", "--cuda-graph"],
                     ["bench", "--profile", "p.json", "b.pt", "--budget-ms", "2"]):
            build_parser(argv).parse_args(argv)
        args = build_parser(["--compare", "b.pt", "t.pt"], only="bench").parse_args(["--compare", "b.pt", "t.pt"])
        assert args.compare and args.inputs == ["b.pt", "t.pt"]
    """)
    assert _loaded_after(code) == []
