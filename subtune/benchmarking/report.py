"""Formatting, kept apart from measuring: text tables for people, JSON for programs. Both are
made from the same result dataclasses, so they never disagree."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from subtune.atomic import write_text

# Properties worth having in JSON besides the dataclass fields.
_JSON_PROPERTIES = {"Timing": ("noisy",), "CostPrediction": ("error_ms", "relative_error")}


def to_jsonable(obj: Any) -> Any:
    """Dataclasses to dicts (with the properties above), tuples to lists, inf/nan to null."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        for name in _JSON_PROPERTIES.get(type(obj).__name__, ()):
            out[name] = to_jsonable(getattr(obj, name))
        if out.get("samples_ms", ...) is None:  # raw samples only when they were kept
            del out["samples_ms"]
        return out
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, result: Any) -> None:
    write_text(path, json.dumps(to_jsonable(result), indent=2) + "\n")


def read_results(path: str | Path, flag: str) -> dict:
    """A results JSON a bench script wrote, for its `flag` (--render, --retime); a bad file ends the
    script with one line."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{flag} expects a results.json this script wrote; could not read {path}: {e}") from None


def save_result(directory: str | Path, stem: str, result: Any, text: str) -> list[Path]:
    """`stem`.json and `stem`.txt in `directory` (made if missing): the bench scripts' outputs."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, text_path = directory / f"{stem}.json", directory / f"{stem}.txt"
    write_json(json_path, result)
    write_text(text_path, text + "\n")
    return [json_path, text_path]


# --------------------------------------------------------------------------- shared pieces


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned first column, right-aligned numbers."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def context_line(machine: dict, runtime: dict, protocol) -> str:
    libs = machine.get("libraries", {})
    rt = runtime.get("runtime", "?")
    version = runtime.get("version") or libs.get(rt, "")
    where = runtime.get("provider") or runtime.get("device") or ""
    threads = runtime.get("intra_op_threads", machine.get("threads"))
    load = machine.get("load_average")
    runtime_text = " ".join(str(x) for x in (rt, version, where) if x)
    return (f"{machine.get('cpu', '?')} ({machine.get('usable_cores')} usable cores); {runtime_text}; "
            f"threads {threads}; warm-up {protocol.warmup}, {protocol.repeats} repeats x {protocol.iters} runs"
            + (f"; load average {load[0]:.1f}" if load else ""))


def _ms(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.2f}" if abs(x) < 100 else f"{x:.1f}"


def _spread(t) -> str:
    return f"{100 * t.spread:.1f}%" + (" noisy" if t.noisy else "")


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f}"


# --------------------------------------------------------------------------- tables


def model_table(result) -> str:
    rows = [[str(t.batch), _ms(t.median_ms), _ms(t.mean_ms), _ms(t.p90_ms), _ms(t.p99_ms), _ms(t.min_ms),
             f"{t.throughput:.1f}", _spread(t)] for t in result.timings]
    head = ["batch", "median ms", "mean ms", "p90 ms", "p99 ms", "min ms", "images/s", "spread"]
    return "\n".join([f"{result.model}", context_line(result.machine, result.runtime, result.protocol), "",
                      table(head, rows), "", _legend()])


def compare_table(result) -> str:
    tasks = ", ".join(f"{t['name']} (blocks {t['blocks'][0]}-{t['blocks'][1]})" for t in result.tasks)
    parts = [f"tasks: {tasks}; input {result.input_size[0]}x{result.input_size[1]}",
             context_line(result.machine, result.runtime, result.protocol)]
    head = ["variant", "k", "sessions", "median ms", "x base", "added ms", "added/task", "p90 ms", "spread", "weights MB"]
    for batch in sorted({r.batch for r in result.rows}):
        rows = [[r.label, str(r.tasks), str(r.sessions), _ms(r.timing.median_ms), f"{r.ratio_to_base:.2f}",
                 _ms(r.added_ms) if r.tasks else "-", _ms(r.added_ms_per_task) if r.tasks else "-",
                 _ms(r.timing.p90_ms), _spread(r.timing), _mb(r.weight_bytes)]
                for r in result.rows if r.batch == batch]
        parts += ["", f"batch {batch}", table(head, rows)]
    if any(r.kind == "selected" for r in result.rows):
        parts += ["", selection_table(result)]
    if any(r.kind == "naive" for r in result.rows) and any(r.kind == "split" for r in result.rows):
        parts += ["", versus_table(result)]
    parts += ["", cost_table(result.predictions), "", layers_table(result.layers)]
    if result.agreement:
        parts += ["", f"every variant's outputs agree with the plainest deployment's within "
                      f"{max(result.agreement.values()):.1e} (relative)"]
    return "\n".join(parts + ["", _legend()])


def versus_table(result) -> str:
    """The compiled graph against the alternatives: its latency over theirs (below 1: faster)."""
    head = ["batch", "k", "(d) ms", "(b) ms", "(c) ms", "(d)/(b)", "(d)/(c)", "(d) added / (b) added"]
    rows = []
    for batch in sorted({r.batch for r in result.rows}):
        for k in sorted({r.tasks for r in result.rows if r.tasks}):
            d, b, c = (result.row(f"{kind}/k={k}", batch) for kind in ("compiled", "naive", "split"))
            rows.append([str(batch), str(k), _ms(d.timing.median_ms), _ms(b.timing.median_ms), _ms(c.timing.median_ms),
                         f"{d.timing.median_ms / b.timing.median_ms:.2f}", f"{d.timing.median_ms / c.timing.median_ms:.2f}",
                         f"{d.added_ms / b.added_ms:.2f}" if b.added_ms > 0 else "-"])
    return "\n".join(["the compiled graph (d) against naive (b) and split (c): ratios below 1 mean (d) is faster",
                      table(head, rows)])


def selection_table(result) -> str:
    """The task-select graph (e) under each request mix against the base and today's graph (d):
    latency over the base's at the same batch size, which is the ratio per image."""
    mixes = list(dict.fromkeys(r.mix for r in result.rows if r.kind == "selected"))
    head = ["batch", "k", "(a) ms", "(d) x base", *[f"(e) {m} x base" for m in mixes]]
    rows = []
    for batch in sorted({r.batch for r in result.rows}):
        base = next(r for r in result.rows if r.kind == "base" and r.batch == batch)
        for k in sorted({r.tasks for r in result.rows if r.kind == "selected"}):
            compiled = [r for r in result.rows if r.kind == "compiled" and r.tasks == k and r.batch == batch]
            cells = [result.row(f"selected/k={k}/{m}", batch).ratio_to_base for m in mixes]
            rows.append([str(batch), str(k), _ms(base.timing.median_ms),
                         f"{compiled[0].ratio_to_base:.2f}" if compiled else "-", *(f"{c:.2f}" for c in cells)])
    return "\n".join(["task selection: the task-select graph (e) per request mix, latency over the base's at the same "
                      "batch (= per image)", table(head, rows)])


def cost_table(predictions) -> str:
    head = ["batch", "windows", "k", "predicted added ms", "measured added ms", "error ms", "error", "FLOPs x base"]
    rows = [[str(p.batch), _windows(p.windows), str(len(p.windows)), _ms(p.predicted_added_ms),
             _ms(p.measured_added_ms), _ms(p.error_ms),
             f"{100 * p.relative_error:+.0f}%" if math.isfinite(p.relative_error) else "-",
             f"{p.predicted_flops_ratio:.2f}"] for p in predictions]
    rates = sorted({(p.batch, p.compute_rate_gflops) for p in predictions})
    bandwidth = predictions[0].bandwidth_gbs if predictions else float("nan")
    note = (f"cost model (paper §3.1, generalised to k tasks) for the compiled graph; bandwidth {bandwidth:.1f} GB/s "
            f"(copy probe); compute rate calibrated on the base: "
            + ", ".join(f"batch {b}: {'IO-bound' if not math.isfinite(r) else f'{r:.1f} GFLOP/s'}" for b, r in rates))
    return "\n".join([note, table(head, rows)])


def layers_table(layers) -> str:
    head = ["layer", "name", "GFLOPs/image", "weights MB"]
    rows = [[str(c.index) if c.index else "stem", c.name, f"{c.flops / 1e9:.3f}", _mb(c.weight_bytes)] for c in layers]
    return "\n".join(["per-layer cost at the input resolution (FLOPs = 2 x multiply-adds)", table(head, rows)])


def tradeoff_table(result) -> str:
    head = ["blocks", "accuracy", "added ms", "base ms", "spread", "Pareto"]
    rows = [[p.label, f"{p.accuracy:.4f}", _ms(p.added_ms), _ms(p.base.median_ms),
             _spread(p.compiled), "*" if p.on_front else ""] for p in sorted(result.points, key=lambda p: p.added_ms)]
    parts = [f"accuracy against added latency, batch {result.batch}, input {result.input_size[0]}x{result.input_size[1]}",
             context_line(result.machine, result.runtime, result.protocol), "", table(head, rows)]
    if result.budget_ms is not None and result.chosen is not None:
        c = result.chosen
        parts += ["", f"within {result.budget_ms:g} ms: blocks {c.label} (accuracy {c.accuracy:.4f}, adds {_ms(c.added_ms)} ms)"]
    return "\n".join(parts)


def overhead_table(result) -> str:
    head = ["what is timed", "median us", "p99 us", "min us", "spread"]
    rows = [[name, f"{1e3 * t.median_ms:.2f}", f"{1e3 * t.p99_ms:.2f}", f"{1e3 * t.min_ms:.2f}", _spread(t)]
            for name, t in result.timings.items()]
    return "\n".join(["harness overhead on a one-node (Identity) model",
                      context_line(result.machine, {"runtime": "onnxruntime"}, result.protocol), "", table(head, rows)])


def _windows(windows) -> str:
    distinct = sorted(set(map(tuple, windows)))
    return ", ".join(f"{a}-{b}" for a, b in distinct)


def _legend() -> str:
    return ("median: median of the per-repeat medians; mean: their mean (the paper's statistic); p90/p99 over all runs; "
            "spread: range of the per-repeat medians over their median")
