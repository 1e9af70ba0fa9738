"""Lifecycle benchmark: a live Triton server under steady load while its tasks change with
`subtune rollout` — a task added, a task retrained, a task removed, a rollback — and, for
contrast, the old way: the server restarted on the same repository.

    python bench/triton_rollout.py                                    # efficientnet_lite0 at 64x64
    python bench/triton_rollout.py --arch subtune:tiny_resnet --image-size 32 --steady 2   # a quick check

What runs: a base (`--arch`, random weights from a seed: timing needs no training) and synthetic
tasks compiled into four graphs (v1: two tasks; add: + a third; replace: the second retrained;
remove: the second gone), a python-backend repository of v1, one tritonserver on 127.0.0.1 with
explicit model control (`subtune serve`'s default), and `--concurrency` client threads sending
one image per request back to back (gRPC and HTTP alternating; every request with a timeout),
each answer recording the version that gave it (Triton's `model_version`).

The timeline: `--steady` seconds of load, then each change, each followed by `--steady` seconds.
For each change: requests/s and p50/p99 latency before (the steady window before the command),
during (from the command to its return) and after (the steady window after it); failed requests
in each; the time from the command to the first answer from the new version, and the command's
own duration. Every loop is bounded in time and count.

Writes OUT/triton_rollout.json, .txt (the table), .md (the same as a markdown table) and .png (a
timeline of every request's latency, coloured by the version that answered). Default OUT:
out/triton_rollout. The exit status is 0 only when no request failed during the rollouts
(the restart's failures are the point of comparison, not a failure of this run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MAX_REQUESTS_PER_CLIENT = 1_000_000
BACKOFF_S = 0.02  # after a failed request, so a down server is not hammered in a tight loop


# --------------------------------------------------------------------------- graphs


def build_graphs(arch: str, image_size: int, folder: Path, verify: bool) -> dict[str, Path]:
    """v1 (t1, t2), add (+ t3), replace (t2 retrained), remove (t2 gone), on one random base.
    Tasks tune the last blocks, as SubTuning picks them."""
    from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
    from subtune.compiler.plan import Plan
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base(arch, seed=0)
    _, backbone = base.build()
    n = backbone.num_blocks
    pre = {"image_size": [image_size, image_size], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
           "channels": 3}

    def task(name, blocks, seed):
        t = synthetic_task(base, name, blocks, seed=seed, backbone=backbone)
        t.meta["preprocess"] = dict(pre)
        return t

    t1, t2, t3 = task("t1", [n - 1, n], 1), task("t2", [n], 2), task("t3", [n - 2, n - 1], 3)
    t2_retrained = task("t2", [n], 22)
    plans = {"v1": [t1, t2], "add": [t1, t2, t3], "replace": [t1, t2_retrained, t3], "remove": [t1, t3]}
    out = {}
    for name, tasks in plans.items():
        plan = compile_plan(Plan(base, tasks, input_size=(image_size, image_size)),
                            CompileOptions(verify=verify, check_tensorrt=False))
        out[name] = folder / f"{name}.onnx"
        out[name].write_bytes(serialize(plan))
        print(f"  compiled {name}: outputs {', '.join(plan.output_names)}", file=sys.stderr)
    return out


# --------------------------------------------------------------------------- load


class Load:
    """Client threads sending one request at a time until stopped; every request recorded as
    (start, end, ok, version, error). `url()` is asked for every new client, so a restarted
    server on the same ports is found again."""

    def __init__(self, http_url, grpc_url, model: str, x: np.ndarray, concurrency: int, timeout: float):
        self.http_url, self.grpc_url, self.model, self.x, self.timeout = http_url, grpc_url, model, x, timeout
        self.stop_event = threading.Event()
        self.records: list[list[tuple]] = [[] for _ in range(concurrency)]
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(concurrency)]
        self.t0 = time.perf_counter()
        for t in self.threads:
            t.start()

    def _client(self, i: int):
        if i % 2 == 0:
            import tritonclient.grpc as m

            client = m.InferenceServerClient(self.grpc_url)
        else:
            import tritonclient.http as m

            client = m.InferenceServerClient(self.http_url, connection_timeout=self.timeout,
                                             network_timeout=self.timeout)
        inp = m.InferInput("images", list(self.x.shape), "FP32")
        inp.set_data_from_numpy(self.x)
        return client, inp, m, i % 2 == 0

    def _run(self, i: int) -> None:
        client, inp, m, grpc = self._client(i)
        out = [m.InferRequestedOutput("base")]
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if self.stop_event.is_set():
                break
            began = time.perf_counter()
            try:
                if grpc:
                    r = client.infer(self.model, [inp], outputs=out, client_timeout=self.timeout)
                    version = int(r.get_response().model_version)
                else:
                    r = client.infer(self.model, [inp], outputs=out, timeout=int(self.timeout * 1e6))
                    version = int(r.get_response()["model_version"])
                a = r.as_numpy("base")
                if a is None or a.size == 0:
                    raise RuntimeError("empty base output")
                self.records[i].append((began - self.t0, time.perf_counter() - self.t0, True, version, ""))
            except Exception as e:  # noqa: BLE001 - counted and reported
                self.records[i].append((began - self.t0, time.perf_counter() - self.t0, False, 0,
                                        f"{type(e).__name__}: {str(e)[:160]}"))
                time.sleep(BACKOFF_S)
                try:
                    client.close()
                except Exception:  # noqa: BLE001
                    pass
                client, inp, m, grpc = self._client(i)
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def stop(self, timeout: float) -> tuple[list[tuple], int]:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=timeout + 10)
        return sorted(r for rs in self.records for r in rs), sum(t.is_alive() for t in self.threads)


def window(records, start: float, end: float) -> dict:
    """Requests that completed in [start, end): throughput, latency percentiles, failures."""
    done = [r for r in records if start <= r[1] < end]
    lat = np.array([(e - b) * 1e3 for b, e, ok, _, _ in done if ok])
    span = max(end - start, 1e-9)
    return {"seconds": span, "completed": int(len(lat)), "failed": sum(not r[2] for r in done),
            "requests_per_s": len(lat) / span,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "max_ms": float(lat.max()) if len(lat) else None,
            "versions": sorted({int(r[3]) for r in done if r[2]})}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="timm:efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--steady", type=float, default=10.0, help="seconds of load before the first change and after each")
    p.add_argument("--timeout", type=float, default=10.0, help="client timeout per request, seconds")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per served instance (0: cores)")
    p.add_argument("--no-restart", action="store_true", help="skip the restart the rollouts are compared with")
    p.add_argument("--no-verify", action="store_true", help="compile without verifying against PyTorch (faster)")
    p.add_argument("-o", "--out", default="out/triton_rollout")
    args = p.parse_args(argv)

    import subtune
    from subtune.benchmarking.report import save_result
    from subtune.machine import machine_info, usable_cores
    from subtune.serving.repository import RepoOptions, write_repository
    from subtune.serving.server import ServerOptions, TritonServer, free_port

    work = Path(tempfile.mkdtemp(prefix="triton-rollout-"))
    result: dict = {"arch": args.arch, "image_size": args.image_size,
                    "settings": {k: getattr(args, k) for k in ("concurrency", "steady", "timeout", "threads")},
                    "machine_before": machine_info(usable_cores())}
    try:
        print("compiling the graphs ...", file=sys.stderr)
        graphs = build_graphs(args.arch, args.image_size, work, verify=not args.no_verify)
        repo = work / "repo"
        write_repository(graphs["v1"], repo, RepoOptions(name="model", ort_threads=args.threads))
        ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        opts = ServerOptions(**ports, exit_timeout_s=2, log_path=work / "tritonserver.log")
        server = TritonServer(repo, opts).start()
        x = np.random.default_rng(0).standard_normal((1, 3, args.image_size, args.image_size), dtype=np.float32)
        load = Load(server.http_url, server.grpc_url, "model", x, args.concurrency, args.timeout)
        changes = []
        try:
            time.sleep(args.steady)
            steps = [("add a task", graphs["add"], ()), ("retrain a task", graphs["replace"], ("t2",)),
                     ("remove a task", graphs["remove"], ()), ("roll back", None, ())]
            for label, graph, replace in steps:
                print(f"{label} ...", file=sys.stderr)
                began = load.now()
                r = subtune.rollout(repo, graph, rollback=graph is None, url=server.http_url, replace=replace,
                                    timeout=120)
                ended = load.now()
                changes.append({"change": label, "command_start_s": began, "command_end_s": ended,
                                "from_version": r.served_before, "to_version": r.serving,
                                "server_load_s": r.load_seconds,
                                "checked_same_layout": r.comparison.same_layout,
                                "outputs": {o.name: {"status": o.status, "bit_identical": o.bit_identical,
                                                     "max_difference": o.max_difference}
                                            for o in r.comparison.outputs}})
                time.sleep(args.steady)
            if not args.no_restart:
                print("restart (for contrast) ...", file=sys.stderr)
                began = load.now()
                server.stop()
                server = TritonServer(repo, opts).start()  # the same ports
                ended = load.now()
                changes.append({"change": "restart the server", "command_start_s": began, "command_end_s": ended,
                                "server_load_s": ended - began,
                                "from_version": changes[-1]["to_version"] if changes else 1,
                                "to_version": changes[-1]["to_version"] if changes else 1})
                time.sleep(args.steady)
        finally:
            records, hung = load.stop(args.timeout)
            server.stop()
        for c in changes:
            s, e = c["command_start_s"], c["command_end_s"]
            c["before"] = window(records, s - args.steady, s)
            c["during"] = window(records, s, e)
            c["after"] = window(records, e, e + args.steady)
            c["command_s"] = e - s
            if c["change"] != "restart the server":
                first = [r[1] for r in records if r[2] and r[3] == c["to_version"] and r[0] >= s]
                c["first_answer_from_new_version_s"] = (min(first) - s) if first else None
            else:
                first = [r[1] for r in records if r[2] and r[0] >= s + 1e-3 and r[1] > e - 1e-3]
                c["first_answer_after_restart_s"] = (min(first) - s) if first else None
            c["failed_requests"] = sum(1 for r in records if not r[2] and s - 1e-3 <= r[1] <= e + args.steady)
        result.update(changes=changes, requests=len(records), hung_threads=hung,
                      first_errors=sorted({r[4] for r in records if not r[2]})[:3], machine_after=machine_info(usable_cores()))
        timeline = [(round(b, 4), round(e, 4), ok, v) for b, e, ok, v, _ in records]
        plot(timeline, changes, Path(args.out) / "triton_rollout.png")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text, markdown = report(result)
    print(text)
    paths = save_result(args.out, "triton_rollout", json.loads(json.dumps(result, default=str)), text)
    (Path(args.out) / "triton_rollout.md").write_text(markdown + "\n")
    for path in [*paths, Path(args.out) / "triton_rollout.md", Path(args.out) / "triton_rollout.png"]:
        print(f"wrote {path}", file=sys.stderr)
    rollout_failures = sum(c["failed_requests"] for c in result["changes"] if c["change"] != "restart the server")
    return 0 if rollout_failures == 0 and result["hung_threads"] == 0 else 2


def fmt(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def report(result: dict) -> tuple[str, str]:
    from subtune.benchmarking.report import table

    header = ["change", "versions", "req/s before", "during", "after", "p50 ms before", "during", "after",
              "p99 ms before", "during", "after", "failed", "command s", "server load s", "new version answers after s"]
    rows = []
    for c in result["changes"]:
        b, d, a = c["before"], c["during"], c["after"]
        first = c.get("first_answer_from_new_version_s", c.get("first_answer_after_restart_s"))
        rows.append([c["change"], f"{c['from_version']} -> {c['to_version']}",
                     fmt(b["requests_per_s"]), fmt(d["requests_per_s"]), fmt(a["requests_per_s"]),
                     fmt(b["p50_ms"], 2), fmt(d["p50_ms"], 2), fmt(a["p50_ms"], 2),
                     fmt(b["p99_ms"], 2), fmt(d["p99_ms"], 2), fmt(a["p99_ms"], 2),
                     str(c["failed_requests"]), fmt(c["command_s"], 2), fmt(c.get("server_load_s"), 2), fmt(first, 2)])
    m = result["machine_before"]
    s = result["settings"]
    head = (f"Triton lifecycle: {result['arch']} at {result['image_size']}x{result['image_size']}, python backend, "
            f"{s['concurrency']} clients (gRPC and HTTP, one image per request, {s['timeout']:.0f} s timeout), "
            f"{s['steady']:g} s steady windows; {result['requests']} requests in all")
    def load(machine: dict) -> str:
        return ", ".join(f"{x:.2f}" for x in machine.get("load_average") or [])

    machine = (f"machine: {m.get('cpu')}, {m.get('usable_cores')} usable cores, CPU flags "
               f"{', '.join(m.get('cpu_flags') or []) or 'none of AVX2/AVX-512/VNNI/AMX'}; load average before "
               f"{load(m)}, after {load(result['machine_after'])}")
    note = ("before/after: the steady windows either side of the command; during: from the command to its return "
            "(the rollout's checks of the new graph here, the server's load of the new version, its answers on the "
            "check images); failed: requests that failed from the command to the end of the window after it; server "
            "load: the server's load of the new version (restart: stop and start); new version answers after: from "
            "the command to the first answer the new version gave (restart: the first answer after it)")
    text = "\n".join([head, machine, table(header, rows), note])
    md = [head + "  ", machine, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", note]
    return text, "\n".join(md)


def plot(timeline, changes, path: Path) -> None:
    from subtune.benchmarking.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 4))
    versions = sorted({v for _, _, ok, v in timeline if ok})
    colours = plt.get_cmap("tab10")
    for k, v in enumerate(versions):
        pts = [(e, (e - b) * 1e3) for b, e, ok, ver in timeline if ok and ver == v]
        ax.scatter(*zip(*pts), s=2, color=colours(k % 10), label=f"version {v}")
    bad = [(e, (e - b) * 1e3) for b, e, ok, _ in timeline if not ok]
    if bad:
        ax.scatter(*zip(*bad), s=8, marker="x", color="red", label=f"failed ({len(bad)})")
    for c in changes:
        ax.axvspan(c["command_start_s"], c["command_end_s"], color="grey", alpha=0.2)
        ax.text(c["command_start_s"], 1.0, c["change"], rotation=90, va="bottom", fontsize=7,
                transform=ax.get_xaxis_transform())
    ax.set_yscale("log")
    ax.set_xlabel("seconds")
    ax.set_ylabel("latency, ms")
    ax.legend(loc="upper right", fontsize=7, markerscale=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
