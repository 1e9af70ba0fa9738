"""Issue 5's acceptance table: ResNet-50 at 224 on ONNX Runtime (CPU), tasks whose weights
differ from the base's, k = 1, 2, 4, 8 tasks on blocks 13-14 and on 15-16, batch 1 and 8:
(a) base, (b) naive, (c) split, (d) compiled, side by side, and the cost model's prediction
for (d) against the measurement.

    python bench/compare_resnet50.py                       # quick protocol (minutes)
    python bench/compare_resnet50.py --paper-protocol      # 300 warm-up, 10 x 300 (hours on CPU)
    python bench/compare_resnet50.py --iters 5 --repeats 2 --task-counts 1,2 --image-size 64   # smoke test
    python bench/compare_resnet50.py --provider cuda --batch 1,8,32          # ONNX Runtime's CUDA provider
    python bench/compare_resnet50.py --runtime torch --device cuda           # PyTorch eager on the GPU

Writes OUT/compare_resnet50.{json,txt} and OUT/compare_resnet50_blocks<W>.png per window; the
JSON holds the machine, library versions and thread count with every result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from subtune.benchmarking import plots
from subtune.benchmarking.compare import run_compare
from subtune.benchmarking.harness import protocol_from_flags
from subtune.benchmarking.report import compare_table, save_result
from subtune.benchmarking.variants import RuntimeSpec
from subtune.models import make_base
from subtune.synthetic import synthetic_task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="torchvision:resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--windows", default="13-14,15-16", help="tuned blocks of the tasks, one window per table")
    p.add_argument("--task-counts", default="1,2,4,8")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--warmup", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--paper-protocol", action="store_true")
    p.add_argument("--threads", type=int, help="default: the cores this process may use")
    p.add_argument("--runtime", choices=("onnxruntime", "torch"), default="onnxruntime")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="ONNX Runtime's execution provider")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="--runtime torch: where PyTorch runs")
    p.add_argument("-o", "--out", default="out/compare_resnet50")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)  # fail before hours of timing, not after

    protocol = protocol_from_flags(args)
    counts = [int(k) for k in args.task_counts.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    runtime = (RuntimeSpec("torch", device=args.device) if args.runtime == "torch"
               else RuntimeSpec("onnxruntime", provider=args.provider))
    base = make_base(args.arch, seed=0)
    _, backbone = base.build()

    results, texts = {}, []
    for w, window in enumerate(args.windows.split(",")):
        first, last = (int(b) for b in window.split("-"))
        tasks = [synthetic_task(base, f"t{i + 1}", list(range(first, last + 1)), seed=100 * w + i, backbone=backbone)
                 for i in range(max(counts))]
        print(f"blocks {window}: building and timing {len(counts) * 3 + 1} variants ...", file=sys.stderr)
        result = run_compare(base, tasks, batches=batches, protocol=protocol, runtime=runtime,
                             task_counts=counts, input_size=(args.image_size, args.image_size), threads=args.threads)
        results[window] = result
        where = f"torch on {args.device}" if args.runtime == "torch" else f"ONNX Runtime {args.provider} provider"
        texts.append(f"== {args.arch} @ {args.image_size}, tasks on blocks {window}, {where} ==\n"
                     f"{compare_table(result)}")
        print(texts[-1] + "\n", flush=True)
        plots.plot_compare(result, f"{args.out}/compare_resnet50_blocks{window}.png")

    text = "\n\n".join(texts)
    record = {"script": "bench/compare_resnet50.py", "argv": sys.argv[1:] if argv is None else argv,
              "arch": args.arch, "image_size": args.image_size, "runtime": args.runtime, "provider": args.provider,
              "device": args.device, "windows": results}
    for path in save_result(args.out, "compare_resnet50", record, text):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
