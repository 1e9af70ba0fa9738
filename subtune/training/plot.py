"""The finetuning-profile figure (like the paper's Figure 2, left): accuracy per block window,
with the linear-probe and full-finetuning levels as horizontal lines."""

from __future__ import annotations

import os


def plot_profile(data: dict, path: str | os.PathLike, *, stages: dict[str, list[int]] | None = None) -> None:
    """`data` is a profile JSON dict (profile_to_json). Writes a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from subtune.atomic import atomic_path

    entries = data["entries"]
    x = [e["blocks"][0] for e in entries]
    labels = [str(b[0]) if b[0] == b[1] else f"{b[0]}-{b[1]}" for b in (e["blocks"] for e in entries)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(x) + 4.5), 4.2), dpi=120)
    for i, (name, members) in enumerate((stages or {}).items()):
        if i % 2 and members:
            ax.axvspan(members[0] - 0.5, members[-1] + 0.5, color="0.93", zorder=0)
    ax.errorbar(x, [e["accuracy"] for e in entries], yerr=[e.get("accuracy_std", 0) for e in entries],
                marker="o", capsize=3, label="SubTuning (validation)")
    if all("test_accuracy" in e for e in entries):
        ax.errorbar(x, [e["test_accuracy"] for e in entries], yerr=[e.get("test_accuracy_std", 0) for e in entries],
                    marker="s", linestyle="--", capsize=3, label="SubTuning (test)")
    styles = {"linear": ("tab:gray", ":", "linear probe"), "full": ("tab:red", "--", "full finetuning"),
              "head2toe": ("tab:green", "-.", "Head2Toe"), "lora": ("tab:purple", (0, (5, 1, 1, 1)), "LoRA, all blocks")}
    for name, entry in data.get("baselines", {}).items():
        color, ls, text = styles.get(name, ("k", "-.", name))
        value = entry.get("test_accuracy", entry["accuracy"])
        which = "test" if "test_accuracy" in entry else "validation"
        ax.axhline(value, color=color, linestyle=ls, label=f"{text} ({which}) {value:.3f}")
    ax.set_xticks(x, labels, rotation=0 if data.get("window", 1) == 1 else 45)
    ax.set_xlabel("finetuned block" + ("s" if data.get("window", 1) > 1 else ""))
    ax.set_ylabel("accuracy")
    ax.set_title(f"Finetuning profile: {data.get('arch', '')} on {data.get('data', '')}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # outside: never hides a point
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
