"""Issue 23's scale table: one backbone, many tasks. ResNet-50 @224 with k = 1, 4, 16, 32, 64, 100
synthetic tasks on blocks 13-14 (each with its own weights, subtune.synthetic), and one
EfficientNet-Lite0 row: compile wall time, peak resident memory, graph size, and latency per
image at batch 1 and 8 as x the base beside the FLOP share (subtune.benchmarking.costmodel).

    python bench/many_tasks.py                                   # the full sweep (an hour or more)
    python bench/many_tasks.py --task-counts 1,4 --lite0 none    # a check (minutes)
    python bench/many_tasks.py --render out/many_tasks/many_tasks.json   # tables and plot again

Each compile runs `subtune-compile base.pt t0.pt ... -o graph.onnx` (verification included) in a
fresh process; its peak resident memory is the kernel's own high-water mark for that process
(getrusage), and a watchdog polling it kills the compile above --max-rss-gb. Each latency row
runs in a fresh process too: the base graph (compiled the same way with no task) and the k-task
graph in ONNX Runtime (CPU, the usable cores), timed interleaved so drift hits both alike.
"per added task" is (peak(k) - peak(1)) / (k - 1), beside a task's own weights.

One task per image: where `subtune-compile` has `--task-select` (issue 20), each k of
--task-select-counts is also compiled with it and timed with a `tasks` mask selecting one task per
image (task i % k for image i); where it has not, the column is left out.

Writes OUT/many_tasks.json (every measurement, the machine, the load average), many_tasks.md
(the table) and many_tasks.png; graphs and task files go to --workdir (about 7 GB for the full
sweep) and the graphs are deleted after their row unless --keep-graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ARCHS = {"resnet50": "torchvision:resnet50", "lite0": "timm:efficientnet_lite0"}

# Runs in a fresh process: the compile command, then the process's own peak memory.
_COMPILE = textwrap.dedent("""
    import json, resource, sys, time
    from subtune.cli import main
    start = time.perf_counter()
    code = main(["compile", *sys.argv[2:]])
    with open(sys.argv[1], "w") as f:
        json.dump({"rc": code, "seconds_in_process": time.perf_counter() - start,
                   "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}, f)
    sys.exit(code)
""")

# Runs in a fresh process: the base graph and a k-task graph (and its task-select twin), interleaved.
_LATENCY = textwrap.dedent("""
    import json, sys
    import numpy as np
    from subtune.benchmarking.harness import Protocol, time_interleaved
    from subtune.runtimes.onnxruntime import make_session
    spec = json.loads(sys.argv[1])
    sessions = {name: make_session(path, threads=spec["threads"]) for name, path in spec["graphs"].items()}
    rows = []
    for batch in spec["batches"]:
        x = np.random.default_rng(batch).standard_normal((batch, 3, *spec["size"])).astype(np.float32)
        calls = {}
        for name, session in sessions.items():
            feeds = {"images": x}
            if name == "task_select":  # one task per image: task i % k for image i
                mask = np.zeros((batch, spec["tasks"]), dtype=bool)
                mask[np.arange(batch), np.arange(batch) % spec["tasks"]] = True
                feeds["tasks"] = mask
            calls[name] = lambda s=session, f=feeds: s.run(None, f)
        timed = time_interleaved(calls, batch=batch, protocol=Protocol(**spec["protocol"]))
        rows.append({"batch": batch, **{f"{name}_ms": t.median_ms for name, t in timed.items()},
                     "spread": {name: t.spread for name, t in timed.items()}})
    print(json.dumps(rows))
""")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task-counts", default="1,4,16,32,64,100", help="ResNet-50 rows (default 1,4,16,32,64,100)")
    p.add_argument("--blocks", default="13-14", help="the ResNet-50 tasks' tuned blocks (default 13-14)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--lite0", default="16:15-16", help="the EfficientNet-Lite0 rows, COUNTS:BLOCKS (default 16:15-16, "
                                                      "one row; e.g. 1,16:15-16 for two); none for no row")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: the usable cores)")
    p.add_argument("--no-latency", action="store_true", help="compile rows only")
    p.add_argument("--task-select", choices=("auto", "off"), default="auto",
                   help="auto: the one-task-per-image column where subtune-compile has --task-select (issue 20)")
    p.add_argument("--task-select-counts", default="1,4,16,32",
                   help="the k that get that column (default 1,4,16,32: a task-select graph is a second compile "
                        "per row, verified under four masks with ONNX Runtime's NCHWc copies of the weights)")
    p.add_argument("--max-rss-gb", type=float, default=9.0, help="kill a compile whose memory passes this (default 9)")
    p.add_argument("--workdir", help="base, task and graph files (default OUT/work)")
    p.add_argument("--keep-graphs", action="store_true")
    p.add_argument("-o", "--out", default="out/many_tasks")
    p.add_argument("--render", metavar="JSON", help="write the table and plot again from a result file; no runs")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.render:
        record = json.loads(Path(args.render).read_text())
        return _write(record, out, show=True)

    from subtune.machine import machine_info, usable_cores

    threads = args.threads or usable_cores()
    work = Path(args.workdir or out / "work")
    work.mkdir(parents=True, exist_ok=True)
    select = args.task_select == "auto" and _has_task_select()
    record = {"script": "bench/many_tasks.py", "argv": sys.argv[1:] if argv is None else argv,
              "machine": machine_info(threads), "protocol": {"warmup": args.warmup, "iters": args.iters,
                                                             "repeats": args.repeats},
              "batches": [int(b) for b in args.batch.split(",")], "task_select": select, "rows": []}
    plans = [("resnet50", [int(k) for k in args.task_counts.split(",")], args.blocks)]
    if args.lite0 != "none":
        counts, blocks = args.lite0.split(":")
        plans.append(("lite0", [int(k) for k in counts.split(",")], blocks))
    for arch, counts, blocks in plans:
        files = _task_files(work, arch, max(counts), blocks)
        flops = _flop_fractions(ARCHS[arch], args.image_size, blocks)
        base_graph = None if args.no_latency else _compile(files, 0, work / f"{arch}_k0.onnx", args, [])["graph"]
        first = None
        for k in counts:
            print(f"{arch} k={k}: compiling ...", file=sys.stderr, flush=True)
            row = {"arch": ARCHS[arch], "blocks": blocks, "tasks": k, "image_size": args.image_size,
                   "task_weight_bytes": files["task_bytes"], "flop_share": 1 + k * flops,
                   **_compile(files, k, work / f"{arch}_k{k}.onnx", args, [])}
            graphs = {"base": str(base_graph), "graph": row["graph"]}
            if select and k in {int(c) for c in args.task_select_counts.split(",")}:
                ts = _compile(files, k, work / f"{arch}_k{k}_select.onnx", args, ["--task-select"])
                row["task_select_compile"] = {key: ts[key] for key in ("wall_s", "peak_rss_mib", "graph_bytes")}
                graphs["task_select"] = ts["graph"]
            if first is None and k > 0:
                first = row
            if first is not row and first is not None:
                row["peak_per_added_task_bytes"] = (row["peak_rss_mib"] - first["peak_rss_mib"]) * 2**20 / (
                    k - first["tasks"])
            if not args.no_latency:
                print(f"{arch} k={k}: timing ...", file=sys.stderr, flush=True)
                row["latency"] = _latency(graphs, k, args, threads)
            if not args.keep_graphs:
                for g in graphs.values():
                    if g != str(base_graph):
                        _remove_graph(Path(g))
            record["rows"].append(row)
            _write(record, out)  # after every row: a long sweep leaves what it measured
        if base_graph and not args.keep_graphs:
            _remove_graph(Path(base_graph))
    record["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return _write(record, out, show=True)


# --------------------------------------------------------------------------- inputs


def _task_files(work: Path, arch: str, count: int, blocks: str) -> dict:
    """base.pt and `count` task files with distinct weights (made once, reused by later runs)."""
    from subtune.formats import load_base, save_base, save_task
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    first, last = (int(b) for b in blocks.split("-"))
    base_path = work / f"{arch}_base.pt"
    if not base_path.exists():
        save_base(base_path, make_base(ARCHS[arch], seed=0))
    base = load_base(base_path)
    _, backbone = base.build()
    paths = []
    for i in range(count):
        path = work / f"{arch}_b{blocks}_t{i}.pt"
        if not path.exists():
            print(f"{arch}: writing task {i + 1}/{count}", file=sys.stderr, flush=True)
            save_task(path, synthetic_task(base, f"t{i}", list(range(first, last + 1)), seed=1000 + i,
                                           backbone=backbone))
        paths.append(path)
    own = sum(t.numel() * t.element_size() for b in range(first, last + 1)
              for t in backbone.blocks[b - 1].state_dict().values())
    return {"base": base_path, "tasks": paths, "task_bytes": own}


def _flop_fractions(arch: str, size: int, blocks: str) -> float:
    """The FLOPs one task adds, as a fraction of the base's: its blocks and every block after them
    (the merged stream), over the whole backbone (costmodel.layer_costs; the heads left out)."""
    from subtune.benchmarking.costmodel import layer_costs
    from subtune.models import build_model

    _, backbone = build_model(arch, {})
    costs = layer_costs(backbone, (size, size))
    first = int(blocks.split("-")[0])
    return sum(c.flops for c in costs if c.index >= first) / sum(c.flops for c in costs)


def _has_task_select() -> bool:
    done = subprocess.run([sys.executable, "-m", "subtune.cli", "compile", "--help"], capture_output=True, text=True)
    return "--task-select" in done.stdout


# --------------------------------------------------------------------------- measurements


def _compile(files: dict, k: int, graph: Path, args, extra: list[str]) -> dict:
    """One compile in a fresh process under the watchdog: wall time, peak memory, graph size."""
    import psutil

    with tempfile.TemporaryDirectory(prefix="many-tasks-") as tmp:
        stats = Path(tmp) / "stats.json"
        cmd = [sys.executable, "-c", _COMPILE, str(stats), str(files["base"]), *map(str, files["tasks"][:k]),
               "-o", str(graph), "--image-size", str(args.image_size), *extra]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watched, limit, polled = psutil.Process(proc.pid), args.max_rss_gb * 1e9, 0
        while proc.poll() is None:
            try:
                polled = max(polled, watched.memory_info().rss)
            except psutil.Error:
                break
            if polled > limit:
                proc.kill()
                proc.wait()
                raise SystemExit(f"k={k}: the compile passed {args.max_rss_gb} GB and was stopped (--max-rss-gb)")
            time.sleep(0.2)
        output = proc.communicate()[0]
        wall = time.perf_counter() - start
        if proc.returncode != 0 or not stats.exists():
            raise SystemExit(f"k={k}: subtune-compile failed ({proc.returncode}):\n{output[-3000:]}")
        measured = json.loads(stats.read_text())
    report = json.loads(graph.with_suffix(".report.json").read_text())
    files_written = [Path(f) for f in report["files"] if not f.endswith(".report.json")]
    return {"graph": str(graph), "wall_s": round(wall, 2), "peak_rss_mib": round(measured["peak_kib"] / 1024),
            "graph_bytes": sum(f.stat().st_size for f in files_written), "external_data": len(files_written) > 1,
            "steps_s": report.get("seconds"), "steps_peak_rss_mib": report.get("peak_rss_mib"),
            "verified": report.get("verification", {}).get("passed")}


def _latency(graphs: dict, k: int, args, threads: int) -> list[dict]:
    """Per batch size: the medians (ms) of the base graph, the k-task graph and its task-select
    twin (one task per image), timed interleaved in one fresh process."""
    spec = {"graphs": graphs, "batches": [int(b) for b in args.batch.split(",")], "tasks": k,
            "size": [args.image_size, args.image_size], "threads": threads,
            "protocol": {"warmup": args.warmup, "iters": args.iters, "repeats": args.repeats}}
    done = subprocess.run([sys.executable, "-c", _LATENCY, json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"k={k}: timing failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _remove_graph(path: Path) -> None:
    for f in (path, path.with_name(path.name + ".data"), path.with_suffix(".report.json")):
        f.unlink(missing_ok=True)


# --------------------------------------------------------------------------- outputs


def _write(record: dict, out: Path, show: bool = False) -> int:
    from subtune.atomic import write_text
    from subtune.benchmarking.report import write_json

    write_json(out / "many_tasks.json", record)
    write_text(out / "many_tasks.md", _markdown(record) + "\n")
    if record["rows"]:
        _plot(record, out / "many_tasks.png")
    if show:
        print(_markdown(record))
        print(f"wrote {out / 'many_tasks.json'}, {out / 'many_tasks.md'}, {out / 'many_tasks.png'}", file=sys.stderr)
    return 0


def _markdown(record: dict) -> str:
    batches = record["batches"]
    select = record.get("task_select")
    head = ["model", "blocks", "tasks k", "compile s", "peak RSS GiB", "per added task MB (x its weights)",
            "graph MB", *(f"b{b} x base" for b in batches), "FLOP share",
            *(f"b{b} / FLOP share" for b in batches), *([f"b{b} one task/image x base" for b in batches] if select else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in record["rows"]:
        lat = {x["batch"]: x for x in r.get("latency", [])}
        ratio = {b: lat[b]["graph_ms"] / lat[b]["base_ms"] for b in batches if b in lat}
        added = r.get("peak_per_added_task_bytes")
        cells = [r["arch"].split(":")[-1], r["blocks"], str(r["tasks"]), f"{r['wall_s']:.1f}",
                 f"{r['peak_rss_mib'] / 1024:.2f}",
                 f"{added / 1e6:.1f} ({added / r['task_weight_bytes']:.2f}x)" if added is not None else "-",
                 f"{r['graph_bytes'] / 1e6:,.0f}" + (" (+.data)" if r.get("external_data") else ""),
                 *(f"{ratio[b]:.2f}" if b in ratio else "-" for b in batches), f"{r['flop_share']:.2f}",
                 *(f"{ratio[b] / r['flop_share']:.2f}" if b in ratio else "-" for b in batches)]
        if select:
            cells += [f"{lat[b]['task_select_ms'] / lat[b]['base_ms']:.2f}" if "task_select_ms" in lat.get(b, {})
                      else "-" for b in batches]
        lines.append("| " + " | ".join(cells) + " |")
    m = record["machine"]
    lines.append("")
    load = {k: ", ".join(f"{x:.2f}" for x in m.get(k) or []) for k in ("load_average", "load_average_at_end")}
    lines.append(f"{m.get('cpu')}, {m.get('usable_cores')} usable cores, CPU flags "
                 f"{', '.join(m.get('cpu_flags') or []) or 'none of AVX2/AVX-512/VNNI/AMX'}, ONNX Runtime "
                 f"{m.get('libraries', {}).get('onnxruntime')} CPU with {m.get('threads')} threads; load average "
                 f"{load['load_average']} at the start, {load['load_average_at_end']} at the end; protocol "
                 f"{record['protocol']} (medians, base and graph interleaved). Compile: subtune-compile with "
                 "verification, one fresh process each; peak RSS is that process's high-water mark.")
    return "\n".join(lines)


def _plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from subtune.atomic import atomic_path

    rows = [r for r in record["rows"] if r["arch"] == ARCHS["resnet50"]]
    fig, (mem, lat) = plt.subplots(1, 2, figsize=(12, 4.2))
    fig.subplots_adjust(wspace=0.45)
    if rows:
        ks = [r["tasks"] for r in rows]
        mem.plot(ks, [r["peak_rss_mib"] / 1024 for r in rows], marker="o", color="tab:blue", label="peak RSS, GiB")
        mem.set_xlabel("tasks (k)")
        mem.set_ylabel("peak RSS, GiB", color="tab:blue")
        wall = mem.twinx()
        wall.plot(ks, [r["wall_s"] for r in rows], marker="s", color="tab:orange", label="compile, s")
        wall.set_ylabel("compile + verify, s", color="tab:orange")
        mem.set_title(f"{rows[0]['arch']} @ {rows[0]['image_size']}: compile")
        mem.grid(alpha=0.3)
        lat.plot(ks, [r["flop_share"] for r in rows], color="grey", linestyle="--", label="FLOP share")
        for b, marker in zip(record["batches"], "oD^v"):
            at_b = [(r["tasks"], x) for r in rows for x in r.get("latency", []) if x["batch"] == b]
            if at_b:
                lat.plot([k for k, _ in at_b], [x["graph_ms"] / x["base_ms"] for _, x in at_b], marker=marker,
                         label=f"batch {b}, x base per image")
            sel = [(k, x["task_select_ms"] / x["base_ms"]) for k, x in at_b if "task_select_ms" in x]
            if sel:
                lat.plot(*zip(*sel), marker=marker, linestyle=":", label=f"batch {b}, one task per image")
        lat.set_xlabel("tasks (k)")
        lat.set_ylabel("latency per image, x base")
        lat.set_title("latency beside the FLOP share")
        lat.grid(alpha=0.3)
        lat.legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
