"""Issue 20's sweep: what an image pays for the tasks it asks for. The task-select graph (e) under
four request mixes (every task; one random task per image; one fixed task; none) beside today's
compiled graph (d) and split sessions (c), for k tasks on blocks 13-14 of ResNet-50 at 224 (tasks
with distinct weights, subtune.synthetic), at batch 1 and 8 on ONNX Runtime (CPU): each variant's
latency over the base's at the same batch size, which is its cost per image. All variants of a
batch size are timed interleaved in one run (subtune.benchmarking.harness). Every variant of every
k in --ks is held in memory at once (split sessions are k + 1 ResNet-50 sessions): the default
--ks 1,4,16,32 passed 21 GiB on ResNet-50 before its timing began, so on a 24 GiB machine give one
or a few k per call (each call's table stands alone: its ratios are to its own base).

    python bench/task_select.py                                   # k = 16, the issue's goals (25 min, 9.5 GiB)
    python bench/task_select.py --ks 1,4 --iters 10 --repeats 3   # the rest of the sweep, one call per few k
    python bench/task_select.py --paper-protocol                  # 300 warm-up, 10 x 300
    python bench/task_select.py --render A/task_select.json B/task_select.json -o OUT   # one table and plot of several calls
    python bench/task_select.py --arch subtune:tiny_resnet --image-size 32 --blocks 5-6 --ks 1,2 \\
        --warmup 1 --iters 3 --repeats 2                          # smoke test (a minute)
    python bench/task_select.py --provider cuda                   # ONNX Runtime's CUDA provider

Writes OUT/task_select.json (every timing, the machine with its CPU flags, library versions,
threads), OUT/task_select.md (the table and the issue's goals, met or not) and OUT/task_select.png
(ratio to the base against k, one panel per batch size).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

from subtune.atomic import write_text
from subtune.benchmarking import plots
from subtune.benchmarking.compare import run_compare
from subtune.benchmarking.harness import NOISY_SPREAD, protocol_from_flags
from subtune.benchmarking.report import read_results, write_json
from subtune.benchmarking.variants import MIXES, RuntimeSpec
from subtune.models import make_base
from subtune.synthetic import synthetic_task

KINDS = ("split", "compiled", "selected")
# Issue 20's acceptance goals
GOAL_ONE_RANDOM = 1.35  # batch 8, 16 tasks, one random task per image: at most this x the base per image
GOAL_ALL_VS_COMPILED = 1.05  # every task on every image: within 5 % of today's graph
GOAL_NONE = 1.05  # no task asked: at most this x the base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="torchvision:resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--blocks", default="13-14", help="the tasks' tuned blocks, FIRST-LAST")
    p.add_argument("--ks", default="16", help="numbers of tasks (default 16; every variant of every k is held in "
                                                  "memory at once: ResNet-50 k = 16 takes 9.5 GiB)")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"variants besides the base, of {', '.join(KINDS)}")
    p.add_argument("--mixes", default=",".join(MIXES), help=f"request mixes of the task-select graph, of {', '.join(MIXES)}")
    p.add_argument("--warmup", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--paper-protocol", action="store_true")
    p.add_argument("--threads", type=int, help="default: the cores this process may use")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="ONNX Runtime's execution provider")
    p.add_argument("-o", "--out", default="out/task_select")
    p.add_argument("--render", nargs="+", metavar="JSON",
                   help="no runs: one table and plot from the task_select.json of several calls (e.g. one per k)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # fail before the timing, not after
    if args.render:
        return render(args.render, out)

    ks = sorted({int(k) for k in args.ks.split(",")})
    batches = [int(b) for b in args.batch.split(",")]
    first, last = (int(b) for b in args.blocks.split("-"))
    kinds, mixes = args.kinds.split(","), args.mixes.split(",")
    base = make_base(args.arch, seed=0)
    _, backbone = base.build()
    tasks = [synthetic_task(base, f"t{i + 1}", list(range(first, last + 1)), seed=i + 1, backbone=backbone)
             for i in range(max(ks))]
    print(f"{args.arch} @ {args.image_size}, k = {ks}, tasks on blocks {args.blocks}: building the variants ...",
          file=sys.stderr)
    result = run_compare(base, tasks, batches=batches, protocol=protocol_from_flags(args),
                         runtime=RuntimeSpec("onnxruntime", provider=args.provider), task_counts=ks,
                         input_size=(args.image_size, args.image_size), threads=args.threads, kinds=kinds,
                         mixes=mixes)
    text = markdown(result, args)
    print(text)
    record = {"script": "bench/task_select.py", "argv": sys.argv[1:] if argv is None else argv,
              "arch": args.arch, "image_size": args.image_size, "blocks": [first, last], "ks": ks,
              "provider": args.provider, "goals": goals(result), "result": result}
    write_json(out / "task_select.json", record)
    write_text(out / "task_select.md", text + "\n")
    plots.plot_ratios(result, out / "task_select.png")
    for name in ("task_select.json", "task_select.md", "task_select.png"):
        print(f"wrote {out / name}", file=sys.stderr)
    return 0


def render(paths: list[str], out: Path) -> int:
    """The calls' rows in one table and one plot; each ratio stays the one its call measured (to
    its own base), and each call's machine, protocol and base timings are listed."""
    records = [read_results(p, "--render") for p in paths]
    rows, sources = [], []
    for path, rec in zip(paths, records):
        res = rec["result"]
        proto = res["protocol"]
        bases = ", ".join(f"batch {r['batch']} {r['timing']['median_ms']:.2f} ms" for r in res["rows"]
                          if r["kind"] == "base")
        sources.append(f"- {path}: k = {rec['ks']}, warm-up {proto['warmup']}, {proto['repeats']} repeats x "
                       f"{proto['iters']} runs; base alone {bases}; load average "
                       f"{', '.join(f'{x:.1f}' for x in res['machine'].get('load_average') or [])}")
        for r in res["rows"]:
            timing = SimpleNamespace(**{"noisy": r["timing"]["spread"] > NOISY_SPREAD, **r["timing"]})
            rows.append(SimpleNamespace(**{**r, "timing": timing}))
    first = records[0]["result"]
    result = SimpleNamespace(machine=first["machine"], runtime=first["runtime"], rows=rows,
                             protocol=SimpleNamespace(**first["protocol"]))
    args = SimpleNamespace(arch=records[0]["arch"], image_size=records[0]["image_size"],
                           blocks="-".join(map(str, records[0]["blocks"])))
    text = markdown(result, args).replace("all variants of a batch size interleaved",
                                          "all variants of a batch size interleaved within each call")
    text += "\n\n## The calls\n\n" + "\n".join(sources)
    write_text(out / "task_select.md", text + "\n")
    plots.plot_ratios(result, out / "task_select.png")
    print(text)
    for name in ("task_select.md", "task_select.png"):
        print(f"wrote {out / name}", file=sys.stderr)
    return 0


def _ratio(result, key: str, batch: int) -> float | None:
    row = next((r for r in result.rows if r.key == key and r.batch == batch), None)
    return None if row is None else row.ratio_to_base


def goals(result) -> list[dict]:
    """Issue 20's goals on what was measured (a goal whose variants were not timed is left out)."""
    found = []
    one_random = _ratio(result, "selected/k=16/one-random", 8)
    if one_random is not None:
        found.append({"goal": f"batch 8, k=16, one random task per image: <= {GOAL_ONE_RANDOM}x the base per image",
                      "measured": round(one_random, 3), "met": one_random <= GOAL_ONE_RANDOM})
    for r in result.rows:
        if r.kind == "selected" and r.mix == "all":
            compiled = _ratio(result, f"compiled/k={r.tasks}", r.batch)
            if compiled is not None:
                ratio = r.ratio_to_base / compiled
                found.append({"goal": f"batch {r.batch}, k={r.tasks}, every task: within {GOAL_ALL_VS_COMPILED - 1:.0%} "
                                      "of today's graph", "measured": round(ratio, 3),
                              "met": ratio <= GOAL_ALL_VS_COMPILED})
        if r.kind == "selected" and r.mix == "none":
            found.append({"goal": f"batch {r.batch}, k={r.tasks}, no task asked: <= {GOAL_NONE}x the base",
                          "measured": round(r.ratio_to_base, 3), "met": r.ratio_to_base <= GOAL_NONE})
    return found


def markdown(result, args) -> str:
    m, rt = result.machine, result.runtime
    columns = [("split", None, "(c) split"), ("compiled", None, "(d) today's graph")]
    columns += [("selected", mix, f"(e) {MIXES[mix]}") for mix in MIXES]
    present = [(kind, mix, title) for kind, mix, title in columns
               if any(r.kind == kind and r.mix == mix for r in result.rows)]
    lines = [f"# Task selection: {args.arch} @ {args.image_size}, tasks on blocks {args.blocks}",
             "",
             f"- machine: {m.get('cpu')}, {m.get('usable_cores')} usable cores, CPU flags "
             f"{', '.join(m.get('cpu_flags') or []) or 'none of AVX2/AVX-512/VNNI/AMX'}, {m.get('memory_gib')} GiB; "
             f"load average {', '.join(f'{x:.1f}' for x in m.get('load_average') or [])}",
             f"- runtime: {rt.get('runtime')} {rt.get('version')} ({rt.get('provider')}), intra-op threads "
             f"{rt.get('intra_op_threads')}; protocol: warm-up {result.protocol.warmup}, {result.protocol.repeats} "
             f"repeats x {result.protocol.iters} runs, all variants of a batch size interleaved",
             f"- libraries: {', '.join(f'{k} {v}' for k, v in (m.get('libraries') or {}).items())}",
             "- each cell: median latency over the base's at the same batch size (= the cost per image, x base)",
             ""]
    for batch in sorted({r.batch for r in result.rows}):
        base = next(r for r in result.rows if r.kind == "base" and r.batch == batch)
        lines += [f"## batch {batch} (base alone: {base.timing.median_ms:.2f} ms)", "",
                  "| k | " + " | ".join(title for _, _, title in present) + " |",
                  "|---|" + "---|" * len(present)]
        for k in sorted({r.tasks for r in result.rows if r.tasks}):
            cells = []
            for kind, mix, _ in present:
                key = f"{kind}/k={k}" + (f"/{mix}" if mix else "")
                ratio = _ratio(result, key, batch)
                cells.append("-" if ratio is None else f"{ratio:.2f}")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
    found = goals(result)
    if found:
        lines += ["## Issue 20's goals", ""]
        lines += [f"- {'met' if g['met'] else 'NOT met'}: {g['goal']} (measured {g['measured']})" for g in found]
    noisy = [f"{r.key} at batch {r.batch}" for r in result.rows if r.timing.noisy]
    if noisy:
        lines += ["", f"noisy (per-repeat medians more than 5 % apart): {', '.join(noisy)}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
