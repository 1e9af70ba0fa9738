"""PNG figures (matplotlib, Agg backend: no display needed), written atomically."""

from __future__ import annotations

from pathlib import Path

from subtune.atomic import atomic_path

_MARKERS = {"base": "s", "naive": "o", "split": "^", "compiled": "D", "selected": "v"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")


def plot_compare(result, path: str | Path) -> None:
    """Latency against the number of tasks, one panel per batch size, one line per variant."""
    plt = _pyplot()
    batches = sorted({r.batch for r in result.rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in result.rows if r.batch == batch]
        base = next(r for r in rows if r.kind == "base")
        ks = sorted({r.tasks for r in rows if r.tasks})
        ax.axhline(base.timing.median_ms, color="grey", linestyle="--", label=base.label)
        groups = [(kind, None) for kind in ("naive", "split", "compiled")]
        groups += [("selected", m) for m in dict.fromkeys(r.mix for r in rows if r.kind == "selected")]
        for kind, mix in groups:
            pts = sorted((r.tasks, r.timing.median_ms, r.timing.p90_ms) for r in rows
                         if r.kind == kind and r.mix == mix)
            if pts:
                k, med, p90 = zip(*pts)
                label = next(r.label for r in rows if r.kind == kind and r.mix == mix)
                line, = ax.plot(k, med, marker=_MARKERS[kind], linestyle=":" if mix else "-", label=label)
                ax.fill_between(k, med, p90, color=line.get_color(), alpha=0.15)
        ax.set_xticks(ks)
        ax.set_xlabel("tasks (k)")
        ax.set_ylabel("latency, ms (median; band to p90)")
        ax.set_title(f"batch {batch}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(_title(result), fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_ratios(result, path: str | Path) -> None:
    """Latency over the base's at the same batch size (= per image) against the number of tasks,
    one panel per batch size, one line per variant (the task-select graph: one per request mix)."""
    plt = _pyplot()
    batches = sorted({r.batch for r in result.rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in result.rows if r.batch == batch and r.tasks]
        ax.axhline(1.0, color="grey", linestyle="--", label="(a) base alone")
        groups = list(dict.fromkeys((r.kind, r.mix) for r in rows))
        for kind, mix in groups:
            pts = sorted((r.tasks, r.ratio_to_base) for r in rows if r.kind == kind and r.mix == mix)
            label = next(r.label for r in rows if r.kind == kind and r.mix == mix)
            ax.plot(*zip(*pts), marker=_MARKERS[kind], linestyle=":" if mix else "-", label=label)
        ks = sorted({r.tasks for r in rows})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("tasks (k)")
        ax.set_ylabel("latency per image / the base's")
        ax.set_title(f"batch {batch}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(_title(result), fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_tradeoff(result, path: str | Path) -> None:
    """Accuracy against added latency with the Pareto front (the paper's Figure 4)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    pts = result.points
    ax.scatter([p.added_ms for p in pts], [p.accuracy for p in pts], color="tab:blue", s=18, label="window")
    for p in pts:
        ax.annotate(p.label, (p.added_ms, p.accuracy), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = sorted((p for p in pts if p.on_front), key=lambda p: p.added_ms)
    ax.step([p.added_ms for p in front], [p.accuracy for p in front], where="post", color="tab:red", label="Pareto front")
    if result.budget_ms is not None:
        ax.axvline(result.budget_ms, color="grey", linestyle="--", label=f"budget {result.budget_ms:g} ms")
    if result.chosen is not None:
        ax.scatter([result.chosen.added_ms], [result.chosen.accuracy], s=80, facecolors="none", edgecolors="black",
                   label=f"chosen: blocks {result.chosen.label}")
    ax.set_xlabel(f"added latency over the base, ms (batch {result.batch})")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(_title(result), fontsize=8)
    _save(fig, path)
    plt.close(fig)


def _title(result) -> str:
    rt = result.runtime
    return (f"{result.machine.get('cpu', '?')}, {rt.get('runtime')} {rt.get('provider') or rt.get('device') or ''}, "
            f"threads {rt.get('intra_op_threads', result.machine.get('threads'))}")
