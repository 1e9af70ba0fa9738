"""Load and fault benchmark: a compiled graph served by a real tritonserver (python backend,
ONNX Runtime inside), against ONNX Runtime called in-process, and against the ensemble a Triton
user would build by hand without subtune (the shared prefix, then one model per task remainder:
the `split` variant of `subtune-bench --compare`, as a Triton ensemble).

    python bench/triton_load.py                      # the main job's graph (scripts/main_job.sh)
    python bench/triton_load.py --graph G.onnx --base base.pt --tasks a.pt,b.pt --duration 3
    # single-task requests: the task-select graph (issue 20) against the plain graph, 8 clients
    python bench/triton_load.py --graph G.onnx --select-graph G_select.onnx --variants compiled,select \
        --ask one-task --concurrency 8 --batch 1 --fault-duration 0

Served models, one server, one repository:
    compiled       the compiled graph, dynamic batching on
    compiled-nodb  the compiled graph, dynamic batching off
    split          ensemble: prefix -> base remainder + one remainder per task (dynamic batching on)
    select         (--select-graph) the same tasks compiled with --task-select, dynamic batching on:
                   the served model computes only the tasks a request names
For each: HTTP and gRPC, request batch 1 and 4, concurrency 1, 2, 4, 8 (client threads, one
client each, every request with a timeout), and what each request asks for (--ask): `all` every
output, `one-task` client i only task i mod k (so concurrent requests ask for different tasks and
the dynamic batcher mixes them); throughput (images/s), p50 / p99 latency, errors.
Ratios are to in-process ONNX Runtime (same thread count) at the request's batch size and at
batch 8 (the largest batch dynamic batching forms here), measured right before each cell
(interleaved, so drift in the machine's load hits both sides of a ratio alike).
Fault run: load on the compiled graph while the server is stopped by PID (SIGTERM) and started
again on the same ports: failed requests, time to recovery, and the slowest request, which must
stay within the client timeout.

Everything runs on 127.0.0.1; every loop is bounded in time and count. Writes
OUT/triton_load.json and OUT/triton_load.txt (default OUT: out/triton_load).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from subtune.machine import cpu_flags

MAX_REQUESTS_PER_CELL = 200_000
BACKOFF_S = 0.02  # after a failed request, so a down server is not hammered in a tight loop


# --------------------------------------------------------------------------- repository


def build_repository(graph: Path, base_path: Path | None, task_paths: list[Path], root: Path, *,
                     max_batch: int, queue_delay_us: int, threads: int, instances: int = 1,
                     select_graph: Path | None = None) -> dict:
    """compiled, compiled-nodb, (with a base and tasks) the split ensemble and (with a task-select
    graph) select, in one repository."""
    from subtune.serving.repository import RepoOptions, write_repository

    def add(src: Path, name: str, dynamic: bool = True):
        tmp = Path(tempfile.mkdtemp(prefix="repo-", dir=root.parent))
        try:
            write_repository(src, tmp / "r", RepoOptions(name=name, max_batch_size=max_batch, dynamic_batching=dynamic,
                                                         queue_delay_us=queue_delay_us, ort_threads=threads,
                                                         instances=instances))
            shutil.move(str(tmp / "r" / name), str(root / name))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    root.mkdir(parents=True)
    add(graph, "compiled")
    add(graph, "compiled-nodb", dynamic=False)
    models = {"compiled": "compiled", "compiled-nodb": "compiled-nodb"}
    if select_graph is not None:
        add(select_graph, "select")
        models["select"] = "select"
    if base_path is not None:
        pieces = export_split(base_path, task_paths, graph, root.parent / "split")
        for name, path in pieces["files"].items():
            add(path, name)
        write_split_ensemble(root, pieces, max_batch)
        models["split"] = "split"
    return models


def export_split(base_path: Path, task_paths: list[Path], graph: Path, folder: Path) -> dict:
    import onnx_ir as ir
    import torch

    from subtune.benchmarking.variants import EXPORT_BATCH, PrefixModel, remainder_model
    from subtune.compiler.export import export_onnx
    from subtune.delta import validate_task
    from subtune.formats import load_base, load_task
    from subtune.serving.graph import read_graph

    info = read_graph(graph)
    size = tuple(info.metadata.get("subtune.input_size") or info.inputs[0].dims[1:])
    base = load_base(base_path)
    tasks = [load_task(p) for p in task_paths]
    _, bb = base.build()
    for t in tasks:
        validate_task(t, base, bb)
    names = [t.name for t in tasks]
    if ["base", *names] != [o.name for o in info.outputs]:
        raise SystemExit(f"the tasks {names} are not the graph's ({[o.name for o in info.outputs]}); "
                         "pass --tasks in the graph's order")
    start = min(t.first for t in tasks)
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.randn(EXPORT_BATCH, 3, *size, generator=torch.Generator().manual_seed(0))
    prefix = PrefixModel(bb, start).eval()
    with torch.inference_mode():
        features = prefix(example).clone()
    files = {}

    def save(module, ex, outputs, name):
        model = export_onnx(module.eval(), ex, outputs)
        path = folder / f"{name}.onnx"
        path.write_bytes(ir.to_proto(model).SerializeToString())
        files[name] = path

    save(prefix, example, ["shared"], "split-prefix")
    save(remainder_model(bb, start), features, ["base"], "split-base")
    for t in tasks:
        save(remainder_model(bb, start, t), features, [t.name], f"split-{t.name}")
    return {"files": files, "outputs": ["base", *names], "start_block": start}


def write_split_ensemble(root: Path, pieces: dict, max_batch: int) -> None:
    from subtune.serving.pbtxt import Enum, dumps
    from subtune.serving.graph import read_graph

    graph = read_graph(pieces["files"]["split-prefix"])
    outs = {o: read_graph(pieces["files"][f"split-{o}"]).outputs[0] for o in pieces["outputs"]}
    steps = [{"model_name": "split-prefix", "model_version": -1, "input_map": [{"key": "images", "value": "images"}],
              "output_map": [{"key": "shared", "value": "shared_features"}]}]
    steps += [{"model_name": f"split-{o}", "model_version": -1,
               "input_map": [{"key": "images", "value": "shared_features"}],
               "output_map": [{"key": o, "value": o}]} for o in pieces["outputs"]]
    config = {"name": "split", "platform": "ensemble", "max_batch_size": max_batch,
              "input": [{"name": "images", "data_type": Enum("TYPE_FP32"), "dims": graph.inputs[0].dims}],
              "output": [{"name": o, "data_type": Enum(f"TYPE_{t.dtype}"), "dims": t.dims} for o, t in outs.items()],
              "ensemble_scheduling": {"step": steps}}
    (root / "split" / "1").mkdir(parents=True)
    (root / "split" / "config.pbtxt").write_text(dumps(config))


# --------------------------------------------------------------------------- load


class Client:
    """One tritonclient per load thread; `infer()` sends one request of `x` and asks for every
    output in binary form."""

    def __init__(self, protocol: str, url: str, model: str, x: np.ndarray, outputs: list[str], timeout: float):
        self.protocol, self.model, self.timeout = protocol, model, timeout
        if protocol == "http":
            import tritonclient.http as m

            self.client = m.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
            inp = m.InferInput("images", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            self.outputs = [m.InferRequestedOutput(o, binary_data=True) for o in outputs]
        else:
            import tritonclient.grpc as m

            self.client = m.InferenceServerClient(url)
            inp = m.InferInput("images", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            self.outputs = [m.InferRequestedOutput(o) for o in outputs]
        self.inputs = [inp]
        self.output_names = outputs

    def infer(self) -> None:
        if self.protocol == "http":
            r = self.client.infer(self.model, self.inputs, outputs=self.outputs, timeout=int(self.timeout * 1e6))
        else:
            r = self.client.infer(self.model, self.inputs, outputs=self.outputs, client_timeout=self.timeout)
        for o in self.output_names:
            a = r.as_numpy(o)
            if a is None or a.size == 0:
                raise RuntimeError(f"empty output {o}")

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass


def run_load(make_client, concurrency: int, warmup: float, duration: float, timeout: float,
             events: list | None = None, during=None, cpu_probe=None) -> dict:
    """`concurrency` threads send requests back to back for warmup + duration seconds; only
    completions inside the measured window count. `during(t0)` runs in this thread meanwhile
    (the fault run's restart). Returns throughput in requests/s and latency percentiles."""
    stop = threading.Event()
    records: list[list[tuple[float, float, bool, str]]] = [[] for _ in range(concurrency)]
    ready = threading.Barrier(concurrency + 1)

    def worker(i: int) -> None:
        client = None
        try:
            client = make_client()
        finally:
            ready.wait(timeout=60)
        n = 0
        while not stop.is_set() and n < MAX_REQUESTS_PER_CELL:
            n += 1
            began = time.perf_counter()
            try:
                client.infer()
                records[i].append((began, time.perf_counter(), True, ""))
            except Exception as e:  # noqa: BLE001 - counted and reported
                records[i].append((began, time.perf_counter(), False, f"{type(e).__name__}: {str(e)[:160]}"))
                time.sleep(BACKOFF_S)
        client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait(timeout=60)
    t0 = time.perf_counter()
    cpu = None
    if during is not None:
        during(t0)
    elif cpu_probe is not None:
        time.sleep(warmup)
        before = cpu_probe()
        time.sleep(max(0.0, t0 + warmup + duration - time.perf_counter()))
        after = cpu_probe()
        cpu = {k: after[k] - before.get(k, 0.0) for k in after}
    remaining = t0 + warmup + duration - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)
    stop.set()
    for t in threads:
        t.join(timeout=timeout + 10)
    hung = sum(t.is_alive() for t in threads)
    window = (t0 + warmup, t0 + warmup + duration)
    recs = [r for rs in records for r in rs]
    measured = [r for r in recs if window[0] <= r[1] <= window[1]]
    lat = np.array([(e - b) * 1e3 for b, e, ok, _ in measured if ok])
    errors = [m for _, _, ok, m in measured if not ok]
    out = {"requests_per_s": len(lat) / duration, "completed": int(len(lat)), "errors": len(errors),
           "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
           "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
           "max_ms_all": max(((e - b) * 1e3 for b, e, _, _ in recs), default=None),
           "hung_threads": hung, "first_errors": sorted(set(errors))[:3]}
    if cpu is not None and len(lat):
        out["cpu_s"] = cpu  # CPU seconds in the measured window, by role
        images = len(lat) * batch_of(make_client)
        out["cpu_ms_per_image"] = {k: v * 1e3 / images for k, v in cpu.items()}
        out["cpu_ms_per_image"]["total"] = sum(cpu.values()) * 1e3 / images
    if events is not None:
        events.extend(sorted((b - t0, e - t0, ok) for b, e, ok, _ in recs))
    return out


def model_stats(server, model: str) -> dict:
    """Triton's counters for a model: inference_count (images) and execution_count (model runs)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/stats", timeout=10) as r:
        s = json.loads(r.read())["model_stats"][0]
    return {"inference_count": int(s["inference_count"]), "execution_count": int(s["execution_count"])}


def batch_of(make_client) -> int:
    return getattr(make_client, "batch", 1)


def cpu_probe_for(server):
    """CPU seconds used so far: tritonserver itself, its python-backend stubs (its process group),
    and this process (the load generator's client threads)."""
    tick = os.sysconf("SC_CLK_TCK")

    def probe() -> dict[str, float]:
        totals = {"server": 0.0, "stubs": 0.0}
        pgid = server.pid
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    raw = f.read()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2:].split()
            if int(fields[2]) != pgid:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            totals["server" if int(entry) == pgid else "stubs"] += seconds
        totals["client"] = time.process_time()
        return totals

    return probe


class InProcess:
    """ONNX Runtime called directly on the same graph, same thread count, spinning off as served."""

    def __init__(self, graph: Path, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sess = ort.InferenceSession(str(graph), sess_options=opts, providers=["CPUExecutionProvider"])
        self.name = self.sess.get_inputs()[0].name
        self.shape = self.sess.get_inputs()[0].shape

    def images_per_s(self, batch: int, duration: float) -> float:
        x = np.random.default_rng(batch).standard_normal((batch, *self.shape[1:]), dtype=np.float32)
        for _ in range(2):
            self.sess.run(None, {self.name: x})
        n, began, cpu0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - began < duration and n < MAX_REQUESTS_PER_CELL:
            self.sess.run(None, {self.name: x})
            n += 1
        self.last_cpu_ms_per_image = (time.process_time() - cpu0) * 1e3 / (n * batch)
        return n * batch / (time.perf_counter() - began)


# --------------------------------------------------------------------------- main


def parse_list(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--graph", default="runs/main/model.onnx", help="compiled graph (default: the main job's)")
    p.add_argument("--base", help="base file, for the split ensemble (default: base.pt beside the graph)")
    p.add_argument("--tasks", help="task files in the graph's order (default: <task>.pt beside the graph)")
    p.add_argument("--no-split", action="store_true", help="skip the hand-built split ensemble")
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--batch", default="1,4", help="images per request")
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--variants", default="compiled,compiled-nodb,split,select",
                   help="served variants to load (select: only with --select-graph)")
    p.add_argument("--select-graph", help="the same tasks compiled with --task-select (subtune-compile ... "
                                          "--task-select): adds the `select` variant")
    p.add_argument("--ask", default="all", help="what each request asks for, a comma list of: all (every output), "
                                                "one-task (client i asks only for task i mod k)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each cell")
    p.add_argument("--timeout", type=float, default=10.0, help="client timeout per request, seconds")
    p.add_argument("--max-batch", type=int, default=8, help="served max_batch_size")
    p.add_argument("--queue-delay-us", type=int, default=200)
    p.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime intra-op threads, served (per instance) and in-process "
                        "(default: usable cores in-process, usable cores / instances served)")
    p.add_argument("--instances", type=int, default=1, help="served model instances (default 1)")
    p.add_argument("--served-threads", type=int, default=0,
                   help="ONNX Runtime intra-op threads per served instance only (overrides --threads there)")
    p.add_argument("--fault-duration", type=float, default=20.0, help="seconds of load in the fault run (0: skip)")
    p.add_argument("--fault-concurrency", type=int, default=4)
    p.add_argument("-o", "--out", default="out/triton_load")
    args = p.parse_args(argv)

    from subtune.machine import machine_info, usable_cores
    from subtune.benchmarking.report import save_result
    from subtune.serving.graph import read_graph
    from subtune.serving.server import ServerOptions, TritonServer, free_port

    graph = Path(args.graph)
    if not graph.is_file():
        print(f"{graph}: no compiled graph; run `bash scripts/main_job.sh` or pass --graph", file=sys.stderr)
        return 1
    Path(args.out).mkdir(parents=True, exist_ok=True)
    threads = args.threads or usable_cores()
    served_threads = args.served_threads or args.threads or max(1, usable_cores() // args.instances)
    info = read_graph(graph)
    outputs = [o.name for o in info.outputs]
    size = info.image_input.dims
    asks = args.ask.split(",")
    if not asks or any(a not in ASKS for a in asks):
        print(f"--ask {args.ask}: expected a comma list of {', '.join(ASKS)}", file=sys.stderr)
        return 1
    select_graph = Path(args.select_graph) if args.select_graph else None
    if select_graph is not None:
        sel = read_graph(select_graph)
        if sel.task_select is None or [o.name for o in sel.outputs] != outputs or sel.image_input.dims != size:
            print(f"{select_graph}: expected the tasks of {graph} ({', '.join(outputs[1:])}, input {size}) compiled "
                  "with --task-select", file=sys.stderr)
            return 1
    base_path = task_paths = None
    if not args.no_split and "split" in args.variants:
        base_path = Path(args.base) if args.base else graph.with_name("base.pt")
        task_paths = ([Path(t) for t in args.tasks.split(",")] if args.tasks
                      else [graph.with_name(f"{o}.pt") for o in outputs[1:]])
        missing = [str(q) for q in [base_path, *task_paths] if not q.is_file()]
        if missing:
            print(f"split ensemble skipped: {', '.join(missing)} not found (pass --base/--tasks)", file=sys.stderr)
            base_path = None
    work = Path(tempfile.mkdtemp(prefix="triton-load-"))
    result: dict = {"graph": str(graph), "outputs": outputs, "input": size, "threads": threads,
                    "served_threads_per_instance": served_threads,
                    "select_graph": str(select_graph) if select_graph else None,
                    "settings": {k: getattr(args, k) for k in ("concurrency", "batch", "protocols", "duration", "warmup",
                                                               "timeout", "max_batch", "queue_delay_us", "instances",
                                                               "ask")},
                    "machine_before": machine_info(threads), "cpu_flags": cpu_flags()}
    try:
        print("building the repository ...", file=sys.stderr)
        models = build_repository(graph, base_path, task_paths or [], work / "repo", max_batch=args.max_batch,
                                  queue_delay_us=args.queue_delay_us, threads=served_threads, instances=args.instances,
                                  select_graph=select_graph)
        variants = [v for v in args.variants.split(",") if v in models]
        batches = parse_list(args.batch)
        ort = InProcess(graph, threads)
        ref_s = max(0.5, args.duration / 4)
        ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        opts = ServerOptions(**ports, exit_timeout_s=2, log_path=work / "tritonserver.log")
        server = TritonServer(work / "repo", opts).start()
        cells = []
        try:
            if "split" in variants:
                result["split_vs_compiled_max_rel_error"] = check_split(server, outputs, size)
            if "select" in variants:
                result["select_vs_compiled_max_rel_error"] = check_select(server, outputs, size)
            for variant, protocol, b, c, ask in ((v, p, b, c, a) for v in variants for p in args.protocols.split(",")
                                                 for b in batches for c in parse_list(args.concurrency) for a in asks):
                url = server.http_url if protocol == "http" else server.grpc_url
                x = np.random.default_rng(b).standard_normal((b, *size), dtype=np.float32)
                make = client_factory(protocol, url, models[variant], x, outputs, ask, args.timeout)
                make.batch = b
                # interleaved: in-process references right before each cell, so drift
                # in the machine's load hits both sides of every ratio alike
                same = ort.images_per_s(b, ref_s)
                full = ort.images_per_s(args.max_batch, ref_s)
                full_cpu = ort.last_cpu_ms_per_image
                counted = "split-prefix" if variant == "split" else models[variant]
                stats0 = model_stats(server, counted)
                r = run_load(make, c, args.warmup, args.duration, args.timeout,
                             cpu_probe=cpu_probe_for(server))
                stats1 = model_stats(server, counted)
                runs = stats1["execution_count"] - stats0["execution_count"]
                r["mean_executed_batch"] = ((stats1["inference_count"] - stats0["inference_count"]) / runs
                                            if runs else None)
                if "cpu_ms_per_image" in r:
                    # load-independent: images/s on the same cores scale as 1 / CPU per image
                    r["ort_batch_max_cpu_ms_per_image"] = full_cpu
                    r["x_ort_batch_max_cpu"] = full_cpu / r["cpu_ms_per_image"]["total"]
                r.update(ort_same_batch_images_per_s=same, ort_batch_max_images_per_s=full,
                         x_ort_same_batch=r["requests_per_s"] * b / same,
                         x_ort_batch_max=r["requests_per_s"] * b / full,
                         variant=variant, protocol=protocol, batch=b, concurrency=c, ask=ask,
                         images_per_s=r["requests_per_s"] * b)
                cells.append(r)
                print(f"  {variant:13s} {protocol:4s} batch {b} x{c} {ask:8s}: {r['images_per_s']:8.1f} img/s "
                      f"p50 {fmt(r['p50_ms'])} p99 {fmt(r['p99_ms'])} ms errors {r['errors']}",
                      file=sys.stderr)
            fault = None
            if args.fault_duration > 0:
                print("fault run ...", file=sys.stderr)
                server, fault = fault_run(server, opts, work / "repo", outputs, size, args)
        finally:
            server.stop()
        means = {bb: float(np.mean([r["ort_same_batch_images_per_s"] for r in cells if r["batch"] == bb]))
                 for bb in sorted({r["batch"] for r in cells})}
        if cells:
            means[args.max_batch] = float(np.mean([r["ort_batch_max_images_per_s"] for r in cells]))
        result.update(inprocess_images_per_s=means, cells=cells, fault=fault, machine_after=machine_info(threads))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(result, args.max_batch)
    print(text)
    for path in save_result(args.out, "triton_load", json.loads(json.dumps(result, default=str)), text):
        print(f"wrote {path}", file=sys.stderr)
    bad = sum(r["errors"] + r["hung_threads"] for r in result["cells"])
    return 0 if bad == 0 and (result["fault"] is None or result["fault"]["within_timeout"]) else 2


ASKS = ("all", "one-task")


def client_factory(protocol: str, url: str, model: str, x: np.ndarray, outputs: list[str], ask: str, timeout: float):
    """Makes one Client per load thread: asking for every output (`all`), or (`one-task`) the i-th
    client made for task i mod k only, so concurrent requests ask for different tasks."""
    counter, lock = iter(range(10**6)), threading.Lock()
    tasks = outputs[1:]

    def make():
        with lock:
            i = next(counter)
        return Client(protocol, url, model, x, outputs if ask == "all" else [tasks[i % len(tasks)]], timeout)

    return make


def check_select(server, outputs, size) -> float:
    """The task-select graph asked for one task at a time computes what the compiled graph computes
    (max relative difference; no NaN in the task asked for)."""
    import tritonclient.http as m

    x = np.random.default_rng(0).standard_normal((2, *size), dtype=np.float32)
    client = m.InferenceServerClient(server.http_url, network_timeout=60)
    worst = 0.0
    try:
        def ask(model, names):
            inp = m.InferInput("images", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            r = client.infer(model, [inp], outputs=[m.InferRequestedOutput(o, binary_data=True) for o in names])
            return {o: r.as_numpy(o) for o in names}

        full = ask("compiled", outputs)
        for task in outputs[1:]:
            got = ask("select", [task])[task]
            if np.isnan(got).any():
                raise RuntimeError(f"the select model answered NaN for task {task}, which the request asked for")
            worst = max(worst, float(np.abs(got - full[task]).max() / np.abs(full[task]).max()))
    finally:
        client.close()
    return worst


def check_split(server, outputs, size) -> float:
    """The split ensemble computes what the compiled graph computes (max relative difference)."""
    import tritonclient.http as m

    x = np.random.default_rng(0).standard_normal((2, *size), dtype=np.float32)
    client = m.InferenceServerClient(server.http_url, network_timeout=60)
    try:
        got = {}
        for model in ("compiled", "split"):
            inp = m.InferInput("images", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            r = client.infer(model, [inp], outputs=[m.InferRequestedOutput(o, binary_data=True) for o in outputs])
            got[model] = {o: r.as_numpy(o) for o in outputs}
    finally:
        client.close()
    return max(float(np.abs(got["split"][o] - got["compiled"][o]).max() / np.abs(got["compiled"][o]).max())
               for o in outputs)


def fault_run(server, opts, repo: Path, outputs, size, args):
    """Load on `compiled` over gRPC and HTTP while the server is stopped by PID and started again on
    the same ports. Returns the new server and the numbers."""
    from subtune.serving.server import TritonServer

    x = np.random.default_rng(1).standard_normal((1, *size), dtype=np.float32)
    n = args.fault_concurrency
    counter = iter(range(10**6))
    lock = threading.Lock()

    def make():
        with lock:
            i = next(counter)
        protocol = "grpc" if i % 2 == 0 else "http"
        url = server_box[0].grpc_url if protocol == "grpc" else server_box[0].http_url
        return Client(protocol, url, "compiled", x, outputs, args.timeout)

    server_box = [server]
    marks = {}

    def restart(t0):
        time.sleep(args.fault_duration / 3)
        marks["stop"] = time.perf_counter() - t0
        server_box[0].stop()
        marks["stopped"] = time.perf_counter() - t0
        server_box[0] = TritonServer(repo, opts).start()  # the same ports; the main thread owns the process
        marks["ready"] = time.perf_counter() - t0

    events: list = []
    r = run_load(make, n, 0.0, args.fault_duration, args.timeout, events=events, during=restart)
    failed = [e for e in events if not e[2]]
    ok = [e for e in events if e[2]]
    # the gap clients saw: the last answer before the old server was gone, the first answer to a
    # request sent after that (served by the new server)
    last_ok = max((e[1] for e in ok if e[1] <= marks["stopped"]), default=None)
    first_ok = min((e[1] for e in ok if e[0] >= marks["stopped"]), default=None)
    fault = {"concurrency": n, "protocols": "grpc+http", "duration_s": args.fault_duration,
             "stop_at_s": marks["stop"], "stopped_at_s": marks["stopped"], "ready_again_at_s": marks["ready"],
             "failed_requests": len(failed), "succeeded_requests": len(ok),
             "failed_while_stopping": sum(marks["stop"] <= e[1] <= marks["stopped"] for e in failed),
             "last_success_before_s": last_ok, "first_success_after_s": first_ok,
             "outage_s": (first_ok - last_ok) if first_ok is not None and last_ok is not None else None,
             "recovery_s": (first_ok - marks["stop"]) if first_ok is not None else None,
             "stop_s": marks["stopped"] - marks["stop"], "start_s": marks["ready"] - marks["stopped"],
             "restart_s": marks["ready"] - marks["stop"], "max_latency_ms": r["max_ms_all"],
             "client_timeout_s": args.timeout, "hung_threads": r["hung_threads"],
             "backoff_after_failure_s": BACKOFF_S, "first_errors": r["first_errors"]}
    fault["within_timeout"] = (r["hung_threads"] == 0 and r["max_ms_all"] is not None
                               and r["max_ms_all"] <= args.timeout * 1e3 + 500)
    return server_box[0], fault


def fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def report(result: dict, max_batch: int) -> str:
    from subtune.benchmarking.report import table

    m = result["machine_before"]
    lines = [f"Triton load: {result['graph']} (outputs {', '.join(result['outputs'])}; input {result['input']}), "
             f"python backend + ONNX Runtime: {result['settings']['instances']} instance(s) x "
             f"{result['served_threads_per_instance']} thread(s) served, {result['threads']} thread(s) in-process",
             f"machine: {m.get('cpu')}, {m.get('usable_cores')} usable cores, flags {' '.join(result['cpu_flags'])}; "
             f"load average before {m.get('load_average')}, after {result['machine_after'].get('load_average')}",
             "in-process ONNX Runtime images/s (mean of the references taken before each cell): " + ", ".join(
                 f"batch {b}: {v:.1f}" for b, v in result["inprocess_images_per_s"].items())]
    if "select_vs_compiled_max_rel_error" in result:
        lines.append(f"select: {result['select_graph']} (the same tasks, --task-select); asked one task at a time it "
                     f"answers as the compiled graph within {result['select_vs_compiled_max_rel_error']:.2e} (max "
                     "relative difference). ask one-task: client i asks only for task i mod k")
    if "split_vs_compiled_max_rel_error" in result:
        lines.append(f"split ensemble vs compiled graph: max relative difference "
                     f"{result['split_vs_compiled_max_rel_error']:.2e}")
    def cpu(r):
        c = r.get("cpu_ms_per_image")
        return f"{c['server']:.2f}/{c['stubs']:.2f}/{c['client']:.2f}" if c else "-"

    rows = [[r["variant"], r["protocol"], str(r["batch"]), str(r["concurrency"]), r.get("ask", "all"),
             f"{r['images_per_s']:.1f}",
             fmt(r["p50_ms"]), fmt(r["p99_ms"]), str(r["errors"] + r["hung_threads"]),
             f"{r['x_ort_same_batch']:.2f}", f"{r['x_ort_batch_max']:.2f}", cpu(r),
             f"{r['x_ort_batch_max_cpu']:.2f}" if "x_ort_batch_max_cpu" in r else "-",
             fmt(r.get("mean_executed_batch"))] for r in result["cells"]]
    ort_cpu = [r["ort_batch_max_cpu_ms_per_image"] for r in result["cells"] if "ort_batch_max_cpu_ms_per_image" in r]
    if ort_cpu:
        lines.append(f"in-process ONNX Runtime at batch {max_batch}: {np.mean(ort_cpu):.2f} CPU ms per image (mean)")
    lines.append(table(["variant", "proto", "batch", "conc", "ask", "images/s", "p50 ms", "p99 ms", "errors",
                        "x ORT same batch", f"x ORT batch {max_batch}", "CPU ms/img server/stubs/client",
                        f"x ORT batch {max_batch} by CPU", "mean run batch"], rows))
    lines.append("x ORT: served images/s over in-process ONNX Runtime images/s, measured right before each cell "
                 "(wall clock: on a machine shared with other work the server's many threads can take a larger "
                 f"share of the cores than one in-process session). By CPU: in-process CPU ms per image at batch "
                 f"{max_batch} over the served CPU ms per image (server + stubs + this client); on the same cores "
                 "images/s scale as its inverse, so it holds under load. Mean run batch: images per model execution "
                 "(what dynamic batching formed; for split, at the prefix).")
    f = result.get("fault")
    if f:
        lines.append(f"fault run ({f['concurrency']} clients, {f['protocols']}, {f['duration_s']:.0f} s): server "
                     f"stopped by PID at {f['stop_at_s']:.1f} s (shutdown {f['stop_s']:.1f} s, start {f['start_s']:.1f} s); "
                     f"{f['failed_requests']} failed requests (each followed by a {f['backoff_after_failure_s']*1e3:.0f} "
                     f"ms back-off; {f['failed_while_stopping']} while it shut down), {f['succeeded_requests']} succeeded; "
                     f"clients saw no answer for {fmt(f['outage_s'])} s; the new server answered {fmt(f['recovery_s'])} s "
                     f"after the stop began; slowest request {fmt(f['max_latency_ms'])} ms "
                     f"(client timeout {f['client_timeout_s']:.0f} s): "
                     f"{'no request hung' if f['within_timeout'] else 'A REQUEST HUNG PAST ITS TIMEOUT'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
