"""The layer-sensitivity table of an INT8 report (mixed.py) as a PNG: one bar per quantised
layer, sorted, the error each adds to each output when quantised alone; fp32 fallbacks marked."""

from __future__ import annotations

TOP = 40  # layers shown; the JSON report has them all


def sensitivity_table(report: dict, top: int | None = None) -> list[str]:
    """Text lines: the most sensitive layers first (`report` is the compile report's precision part)."""
    mixed = report.get("mixed") or {}
    layers = (mixed.get("sensitivity") or {}).get("layers", [])
    chosen = set((mixed.get("fallback") or {}).get("nodes", []))
    if not layers:
        return []
    outputs = list(layers[0]["relative_logit_error"])
    lines = [f"{'#':>3} {'layer':<44} {'op':<6} " + " ".join(f"{o[:12]:>12}" for o in outputs) + "  fp32"]
    for i, s in enumerate(layers[:top] if top else layers, 1):
        errs = " ".join(f"{s['relative_logit_error'][o]:>12.2e}" for o in outputs)
        lines.append(f"{i:>3} {s['label'][-44:]:<44} {s['op_type']:<6} {errs}  {'yes' if s['node'] in chosen else ''}")
    return lines


def plot_sensitivity(report: dict, path, top: int = TOP) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from subtune.atomic import atomic_path

    mixed = report.get("mixed") or {}
    layers = (mixed.get("sensitivity") or {}).get("layers", [])[:top]
    chosen = set((mixed.get("fallback") or {}).get("nodes", []))
    if not layers:
        return
    outputs = list(layers[0]["relative_logit_error"])
    fig, ax = plt.subplots(figsize=(9, 0.25 * len(layers) + 1.8))
    y = np.arange(len(layers))
    height = 0.8 / len(outputs)
    for k, out in enumerate(outputs):
        ax.barh(y + k * height, [s["relative_logit_error"][out] for s in layers], height, label=out)
    ax.set_yticks(y + 0.4 - height / 2)
    ax.set_yticklabels([("[fp32] " if s["node"] in chosen else "") + s["label"][-40:] for s in layers], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("relative logit error vs fp32 with only this layer in int8")
    scheme = report.get("scheme", {})
    ax.set_title(f"INT8 layer sensitivity ({scheme.get('target', '?')} form), {len(chosen)} layer(s) kept in fp32",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def search_cost(mixed: dict) -> list[str]:
    """What the fallback search cost (mixed.py's report), or why there was none."""
    sens, cost = mixed.get("sensitivity") or {}, mixed.get("cost")
    if cost is None:
        return []
    if "skipped" in sens:
        return [f"fallback search: none ({sens['skipped']}; the plain int8 check took "
                f"{cost['plain_check_seconds']:.1f} s; --sensitivity measures the layer table anyway)"]
    parts = [f"layer sensitivity of {mixed['units']} layers on {sens['images']} images, {sens['method']} "
             f"({sens['sessions']} session{'s' if sens['sessions'] != 1 else ''}): {sens['seconds']:.1f} s"]
    if "greedy_seconds" in cost:
        parts.append(f"{cost['evaluations'] - 1} fallback evaluation(s) on {mixed['check']['images']} check images: "
                     f"{cost['greedy_seconds']:.1f} s")
    return [f"fallback search: {cost['search_seconds']:.1f} s (" + "; ".join(parts) + ")"]


def precision_summary(report: dict | None, top: int = 10) -> list[str]:
    """What `subtune-compile` prints about a reduced graph: the check against fp32 per output, the
    INT8 form and why, the layers kept in fp32, the quick latency check, the most sensitive layers."""
    if not report:
        return []
    name = report["precision"]
    lines = []
    scheme = report.get("scheme", {})
    if name == "int8" and scheme.get("target"):
        lines.append(f"int8 form: {scheme['target']}" + (f" ({scheme['target_reason']})" if scheme.get("target_reason")
                                                         else ""))
    ver = report.get("verification")
    if not ver:
        return lines + [f"{name} graph written without its check against fp32 (--no-verify)"]
    held = "" if ver.get("held_out", True) else " (NOT held out)"
    lines.append(f"{name} vs the fp32 graph on {ver['images']}{held}:")
    lines.append(f"  {'output':<20} {'top-1 agree':>11} {'confident':>10} {'accuracy fp32 -> ' + name:>24} "
                 f"{'top-5':>6} {'relative err':>12}")
    for o in ver["outputs"]:
        acc = f"{o['accuracy_fp32']:.1%} -> {o['accuracy']:.1%}" if o.get("accuracy") is not None else "-"
        conf = f"{o['confident_agreement']:.1%}" if o.get("confident_agreement") is not None else "-"
        top5 = f"{o['top5_overlap']:.3f}" if o.get("top5_overlap") is not None else "-"
        lines.append(f"  {o['output']:<20} {o['agreement']:>11.1%} {conf:>10} {acc:>24} {top5:>6} "
                     f"{o['relative_error']:>12.2e}")
    if "base_output_vs_base_only" in ver:
        lines.append(f"  base output with tasks vs the base-only int8 graph: max |difference| "
                     f"{ver['base_output_vs_base_only']['max_abs_difference']:g}")
    mixed = report.get("mixed") or {}
    fb = mixed.get("fallback")
    if fb is not None:
        lines.append(f"layers kept in fp32: {fb['layers']} of {mixed['units']} quantised"
                     + (f" ({', '.join(fb['labels'][:6])}{', ...' if len(fb['labels']) > 6 else ''})"
                        if fb["labels"] else ""))
    lines += search_cost(mixed)
    lat = ver.get("latency")
    if lat:
        parts = [f"batch {k.split('_')[1]}: {v['reduced_ms']:.2f} ms vs {v['fp32_ms']:.2f} ms fp32 ({v['ratio']:.2f}x)"
                 for k, v in lat.items() if k.startswith("batch_")]
        lines.append(f"quick latency check, {lat['runtime']}: " + "; ".join(parts)
                     + " (a few rounds: bench/int8_accuracy.py measures properly)")
    table_lines = sensitivity_table(report, top)
    if table_lines:
        lines.append("most sensitive layers (relative logit error with only that layer in int8; full table in the "
                     "report):")
        lines += ["  " + line for line in table_lines]
    return lines
