from __future__ import annotations

import argparse

FLAGS = {"threads": "--ort-threads"}  # the library's parameters spelt otherwise here


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="a compiled model.onnx, or engine.plan (with the engine.onnx it was built from beside it)")
    p.add_argument("-o", "--output", required=True, help="the repository folder to write (must not exist unless --force)")
    p.add_argument("--name", help="the graph's model name (default: the file's stem)")
    p.add_argument("--backend", choices=["python", "onnxruntime", "tensorrt"],
                   help="python: ONNX Runtime in Triton's python backend, what loads with the tritonserver from PyPI "
                        "(default for .onnx); onnxruntime / tensorrt: platform onnxruntime_onnx / tensorrt_plan, "
                        "for NVIDIA's Triton containers (default tensorrt for an engine)")
    p.add_argument("--max-batch-size", type=int, default=8, help="largest batch Triton forms or accepts (default 8)")
    p.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    p.add_argument("--device", choices=["cpu", "gpu"], help="instance kind (default: gpu for tensorrt, else cpu)")
    p.add_argument("--no-dynamic-batching", action="store_true", help="run each request as it comes")
    p.add_argument("--queue-delay-us", type=int, default=200,
                   help="dynamic batching: longest wait to fill a batch, microseconds (default 200)")
    p.add_argument("--ort-threads", type=int, default=0, metavar="N",
                   help="python/onnxruntime backends: ONNX Runtime's intra-op threads per model instance (default: "
                        "cores / instances)")
    from subtune.commands.flag_values import add_deprecated

    add_deprecated(p, "--threads", "--ort-threads", "ort_threads", type=int)
    p.add_argument("--preprocess", action="store_true",
                   help="add a preprocessing model (encoded image bytes -> resize and normalise as the tasks were "
                        "trained) and an ensemble NAME_ensemble that chains it to the graph")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from pathlib import Path

    from subtune.commands.flag_values import refuse_unless

    backend = args.backend or ("tensorrt" if Path(args.graph).suffix in (".plan", ".engine") else "python")
    refuse_unless(args, backend != "tensorrt", ["ort_threads"], "with the tensorrt backend: ONNX Runtime's threads "
                  "are for the python and onnxruntime backends")
    refuse_unless(args, not args.no_dynamic_batching, ["queue_delay_us"],
                  "with --no-dynamic-batching: the wait to fill a batch is dynamic batching's")
    from subtune.api import triton_repo

    repo = triton_repo(args.graph, args.output, name=args.name, backend=args.backend,
                       max_batch_size=args.max_batch_size, instances=args.instances, device=args.device,
                       dynamic_batching=not args.no_dynamic_batching, queue_delay_us=args.queue_delay_us,
                       threads=args.ort_threads, preprocess=args.preprocess, overwrite=args.force)
    if args.json:
        print(json.dumps(repo.describe(), indent=2))
        return 0
    print(f"wrote {repo.path}: models {', '.join(repo.models)} ({repo.backend} backend), {repo.graph_model} "
          f"version {repo.version}; "
          f"outputs {', '.join(repo.outputs)}"
          + (f"; class labels for {', '.join(repo.labels)}" if repo.labels else ""))
    if repo.ensemble:
        print(f"clients send encoded images to {repo.ensemble} (input image_bytes, BYTES [batch, 1]); "
              f"tensors to {repo.graph_model} (input images)")
    if repo.task_select:
        mask, k = repo.task_select["input"], len(repo.task_select["columns"])
        columns = ", ".join(repo.task_select["columns"])
        print(f"task selection: a request computes the tasks whose outputs it names (none named: every task); input "
              f"{mask} (BOOL [batch, {k}], one column per task: {columns}; optional) chooses per image"
              if repo.backend == "python" else
              f"task selection: every client sends input {mask} (BOOL [batch, {k}], one column per task: {columns}): "
              f"which images compute which task (NaN elsewhere); the {repo.backend} backend feeds it to the graph")
    if repo.backend == "python":
        print(f"serve it here: subtune serve {repo.path}; later graphs go live with "
              f"subtune rollout {repo.path} NEW.onnx (versions {repo.version + 1}, {repo.version + 2}, ...)")
    else:
        print(f"the {repo.backend} backend loads in NVIDIA's Triton containers (tritonserver --model-repository "
              f"{repo.path}); here, serve the python backend: subtune triton-repo {args.graph} --backend python -o REPO")
    return 0
