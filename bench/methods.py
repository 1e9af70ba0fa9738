"""Issue 14's comparison: the paper's rivals beside SubTuning, for accuracy and for what each adds to
the latency of a deployed multi-task graph. EfficientNet-Lite0 (ImageNet) -> Fashion-MNIST.

    python bench/methods.py [--seeds 0,1,2] [--epochs 50] [--image-size 64] [--threads 2] [-o out/methods]
    python bench/methods.py --seeds 0 --epochs 10 --greedy-blocks 11 --surgical-stage stage4   # reduced
    python bench/methods.py --render out/methods/results.json                                   # redraw only

Data: the protocol of bench/fashion_mnist_profile.py (its helpers): 1,250 class-balanced images
of Fashion-MNIST's training file (data seed 0) split 1,000 train / 250 validation, 2,000
class-balanced test images; Appendix A training settings, no augmentation.

Methods, per training seed (test accuracy reported, never used to choose):
    linear     linear probe: a head on the base's features (a tap task: no fork)
    head2toe   Head2Toe: pooled taps of every block, group-lasso selection (a tap task)
    subtune    SubTuning on the greedy blocks (greedy on mean validation accuracy over the seeds,
               as fashion_mnist_profile.py; --greedy-blocks skips the search)
    subtune_lora  LoRA inside the SubTuning blocks (the paper's suggested composition)
    lora_all   LoRA on every block (merged: forks at block 1)
    surgical   SubTuning of the best stage by validation (--surgical-stage skips the search)
    full       full finetuning: a whole second model beside the base, not a task delta

Then one task per method (the first seed's) is compiled into one graph and verified; the
latency each adds is measured on ONNX Runtime CPU, interleaved (subtune/benchmarking/harness.py), at
each --batch: alone (base + that task, minus the base alone) and in the graph (the whole graph
minus the graph without that task). Full finetuning adds a whole model's run (its own ONNX).

Resumable: each finished training run is written to OUT/runs/<key>.json as it ends (with a digest
of the settings); rerunning the same command reuses those and trains only what is missing.

Writes OUT/results.json, OUT/table.md, OUT/tradeoff.png (accuracy against added latency alone,
from the fastest call of each variant, which other load on a shared machine disturbs least; with
the Pareto front), OUT/tasks/*.pt and OUT/graphs/*.onnx (reused by --retime).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads crawl on shared cores

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_cache_speedup import labelled_splits, pretrained_base  # noqa: E402
from subtune.atomic import atomic_path, write_text  # noqa: E402
from subtune.machine import cpu_flags  # noqa: E402

ARCH = "timm:efficientnet_lite0"
METHODS = ["linear", "head2toe", "subtune", "subtune_lora", "lora_all", "surgical", "full"]
LABELS = {"linear": "linear probe", "head2toe": "Head2Toe", "subtune": "SubTuning (greedy)",
          "subtune_lora": "SubTuning + LoRA", "lora_all": "LoRA, all blocks", "surgical": "surgical (best stage)",
          "full": "full finetuning"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--val", type=int, default=250)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--greedy-blocks", help="SubTuning blocks (e.g. 11 or 11-12) instead of the greedy search")
    p.add_argument("--epsilon", type=float, default=0.005)
    p.add_argument("--max-blocks", type=int, default=3)
    p.add_argument("--surgical-stage", help="the stage for surgical finetuning instead of trying every stage")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float)
    p.add_argument("--feature-budget", default="256,1024,4096")
    p.add_argument("--batch", default="1,8", help="batch sizes for latency (default 1,8)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch and ONNX Runtime threads")
    p.add_argument("--render", metavar="RESULTS_JSON", help="only redraw table.md and tradeoff.png")
    p.add_argument("--retime", metavar="RESULTS_JSON",
                   help="keep the training results and OUT/tasks, measure latency again (reuses OUT/graphs)")
    p.add_argument("-o", "--out", default="out/methods")
    args = p.parse_args(argv)
    if args.render:
        from subtune.benchmarking.report import read_results

        results = read_results(args.render, "--render")
        _write(args.out, results)
        return 0
    if args.retime:
        return retime(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"--methods: unknown {bad}; expected some of {', '.join(METHODS)}")

    import torch

    from subtune.machine import machine_info
    from subtune.training.data import load_dataset
    from subtune.training.trainer import TrainConfig, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    began, cpu_began = time.perf_counter(), time.process_time()
    machine = machine_info(args.threads or torch.get_num_threads())  # load average at the start
    seeds = [int(s) for s in args.seeds.split(",")]
    base = pretrained_base(ARCH)
    train, val = labelled_splits(base, "fashion-mnist", args.train, args.val, args.image_size)
    test = load_dataset("fashion-mnist", "test", image_size=args.image_size, mean=train.mean, std=train.std,
                        limit=args.test)
    config = TrainConfig(epochs=args.epochs)
    trainer = Trainer(base, train, val, test, config=config, log=lambda m: print(m, file=sys.stderr))
    os.makedirs(os.path.join(args.out, "tasks"), exist_ok=True)
    trained = train_all(trainer, args, methods, seeds)
    latency = measure_latency(base, trained, args)
    results = {"methods": {m: trained[m]["summary"] for m in methods}, "latency": latency,
               "wall_seconds": round(time.perf_counter() - began, 1),
               "cpu_seconds": round(time.process_time() - cpu_began, 1),
               "cache_seconds": round(trainer.cache_seconds, 1),
               "machine": machine,
               "cpu_flags": cpu_flags(),
               "protocol": {"arch": ARCH, "image_size": args.image_size, "train": len(train), "val": len(val),
                            "test": len(test), "seeds": seeds, "training": config.to_meta(),
                            "timing": {"warmup": args.warmup, "iters": args.iters, "repeats": args.repeats},
                            "command": "python " + " ".join(sys.argv)}}
    _write(args.out, results)
    return 0


def retime(args) -> int:
    """Latency again for a finished run (e.g. on a quieter machine): same tasks, same table."""
    import torch

    from subtune.machine import machine_info

    if args.threads:
        torch.set_num_threads(args.threads)
    from subtune.benchmarking.report import read_results

    results = read_results(args.retime, "--retime")
    machine = machine_info(args.threads or torch.get_num_threads())
    args.image_size = results["protocol"]["image_size"]
    trained = {m: {"task": os.path.join(args.out, "tasks", f"{m}.pt")} for m in results["methods"]}
    missing = [v["task"] for v in trained.values() if not os.path.isfile(v["task"])]
    if missing:
        raise SystemExit(f"--retime needs the task files of the run in {args.out}/tasks; missing {missing}")
    results["latency"] = measure_latency(pretrained_base(ARCH), trained, args)
    results["machine"], results["cpu_flags"] = machine, cpu_flags()
    results["protocol"]["timing"] = {"warmup": args.warmup, "iters": args.iters, "repeats": args.repeats}
    results["protocol"]["retimed"] = "python " + " ".join(sys.argv)
    _write(args.out, results)
    return 0


# ---------------------------------------------------------------------- training


def train_all(trainer, args, methods: list[str], seeds: list[int]) -> dict:
    """{method: {"summary": aggregate over seeds, "task": path of the first seed's task file}}."""
    from subtune.models.blocks import parse_blocks
    from subtune.training.head2toe import parse_budgets
    from subtune.training.outputs import write_result
    from subtune.training.profile import aggregate

    bb = trainer.backbone
    budgets = parse_budgets(args.feature_budget)
    out: dict[str, dict] = {}
    notes: dict[str, dict] = {}
    done = FinishedRuns(os.path.join(args.out, "runs"), _settings(trainer, args))
    if done.count():
        print(f"  resuming: {done.count()} finished run(s) in {done.folder} are reused", flush=True)

    def run(method: str, seed: int, blocks: list[int] | None = None):
        key = f"{method}-{_blocks_key(blocks)}-seed{seed}"
        task = os.path.join(args.out, "tasks", f"{method}.pt")
        kept = done.get(key)
        if kept is not None and (seed != seeds[0] or os.path.isfile(task)):
            print(f"  {method:12} seed {seed}: val {kept['val_accuracy']:.4f} test {kept['test_accuracy']:.4f} "
                  f"(finished earlier: {done.folder}/{key}.json)", flush=True)
            return kept
        r = {"linear": lambda: trainer.linear(seed=seed),
             "head2toe": lambda: trainer.head2toe(budgets=budgets, seed=seed),
             "subtune": lambda: trainer.subtune(blocks, seed=seed),
             "surgical": lambda: trainer.subtune(blocks, seed=seed),
             "subtune_lora": lambda: trainer.lora(blocks, rank=args.lora_rank, alpha=args.lora_alpha, seed=seed),
             "lora_all": lambda: trainer.lora(None, rank=args.lora_rank, alpha=args.lora_alpha, seed=seed),
             "full": lambda: trainer.full(seed=seed)}[method]()
        print(f"  {method:12} seed {seed}: val {r.val_accuracy:.4f} test {r.test_accuracy:.4f} "
              f"({r.params:,} params, {r.seconds:.0f} s)", flush=True)
        if seed == seeds[0]:  # the first seed's model is the one deployed and timed: written before the run counts
            meta = {"val_accuracy": r.val_accuracy, "test_accuracy": r.test_accuracy, "params": r.params,
                    "seconds": round(r.seconds, 2), "preprocess": trainer.data["train"].preprocess(),
                    "training": {**trainer.config.to_meta(), "seed": seed}}
            write_result(task, trainer.base, r, name=method, classes=trainer.classes, meta=meta)
        summary = r.summary()
        done.put(key, summary)
        return summary

    def collect(method: str, blocks: list[int] | None = None, extra: dict | None = None) -> None:
        runs = [run(method, seed, blocks) for seed in seeds]
        out.setdefault(method, {})["task"] = os.path.join(args.out, "tasks", f"{method}.pt")
        e = aggregate(runs)
        e.update(blocks=[blocks[0], blocks[-1]] if blocks else ([1, bb.num_blocks] if method in ("lora_all", "full")
                                                                 else []), **(extra or {}))
        if runs[0].get("method"):
            e["method"] = runs[0]["method"]
        out[method]["summary"] = e

    for m in ("linear", "head2toe"):
        if m in methods:
            collect(m)
    greedy = None
    if {"subtune", "subtune_lora"} & set(methods):
        if args.greedy_blocks:
            greedy = parse_blocks(args.greedy_blocks, bb)
            notes["greedy"] = {"blocks": greedy, "how": "given with --greedy-blocks (no search in this run)"}
        else:
            greedy, notes["greedy"] = _greedy(trainer, args, seeds, done)
    if "subtune" in methods:
        collect("subtune", greedy, {"selection": notes["greedy"]})
    if "subtune_lora" in methods:
        collect("subtune_lora", greedy, {"selection": notes["greedy"]})
    if "lora_all" in methods:
        collect("lora_all")
    if "surgical" in methods:
        stage, how = _best_stage(trainer, args, seeds, done)
        collect("surgical", bb.stages[stage], {"stage": stage, "selection": how})
    if "full" in methods:
        collect("full")
    return out


def _greedy(trainer, args, seeds, done: "FinishedRuns"):
    from subtune.training.greedy import greedy_select

    scores: dict[tuple, float] = {}

    def score(blocks: list[int]) -> float:
        key = tuple(blocks)
        if key not in scores:
            scores[key] = statistics.fmean(_val_run(done, trainer, "subtune", blocks, s) for s in seeds)
            print(f"  greedy: blocks {blocks[0]}-{blocks[-1]} val {scores[key]:.4f}", flush=True)
        return scores[key]

    start = statistics.fmean(_val_run(done, trainer, "linear", None, s) for s in seeds)
    path = greedy_select(score, trainer.backbone.num_blocks, epsilon=args.epsilon, max_blocks=args.max_blocks,
                         start_score=start)
    return path.selected, {"blocks": path.selected, "how": "greedy on mean validation accuracy", "path": path.to_json()}


def _best_stage(trainer, args, seeds, done: "FinishedRuns"):
    stages = trainer.backbone.stages
    if args.surgical_stage:
        if args.surgical_stage not in stages:
            raise SystemExit(f"--surgical-stage {args.surgical_stage!r}: expected one of {', '.join(stages)}")
        return args.surgical_stage, {"how": "given with --surgical-stage (no search in this run)"}
    val = {name: statistics.fmean(_val_run(done, trainer, "subtune", blocks, s) for s in seeds)
           for name, blocks in stages.items()}
    best = max(val, key=lambda k: (val[k], stages[k][0]))
    return best, {"how": "best mean validation accuracy over the stages", "val_accuracy": val}


class FinishedRuns:
    """OUT/runs/<key>.json, one per finished training run, written atomically as it ends, with a
    digest of everything that decides its result; a rerun of the same command reuses the runs
    whose digest matches (an interrupted comparison resumes, a changed setting retrains)."""

    def __init__(self, folder: str, settings: dict):
        from subtune.sweeps.runlog import settings_digest

        self.folder, self.digest = folder, settings_digest(settings)

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, key + ".json")

    def get(self, key: str) -> dict | None:
        try:
            with open(self._path(key)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data.get("result") if data.get("settings") == self.digest else None

    def put(self, key: str, result: dict) -> None:
        os.makedirs(self.folder, exist_ok=True)
        write_text(self._path(key), json.dumps({"settings": self.digest, "result": result}, indent=1))

    def count(self) -> int:
        if not os.path.isdir(self.folder):
            return 0
        return sum(self.get(name[:-5]) is not None for name in os.listdir(self.folder) if name.endswith(".json"))


def _settings(trainer, args) -> dict:
    """What decides a training run's result besides its method, blocks and seed."""
    return {"arch": ARCH, "base": trainer.base.fingerprint, "image_size": args.image_size, "train": args.train,
            "val": args.val, "test": args.test, "training": trainer.config.to_meta(), "lora_rank": args.lora_rank,
            "lora_alpha": args.lora_alpha, "feature_budget": args.feature_budget}


def _blocks_key(blocks: list[int] | None) -> str:
    return "none" if not blocks else f"{blocks[0]}-{blocks[-1]}"


def _val_run(done: FinishedRuns, trainer, method: str, blocks: list[int] | None, seed: int) -> float:
    """Validation accuracy of one search run (no test evaluation), reused when finished earlier."""
    key = f"search-{method}-{_blocks_key(blocks)}-seed{seed}"
    kept = done.get(key)
    if kept is None:
        r = trainer.linear(seed=seed, test=False) if method == "linear" else trainer.subtune(blocks, seed=seed,
                                                                                          test=False)
        kept = {"val_accuracy": r.val_accuracy, "seconds": round(r.seconds, 3)}
        done.put(key, kept)
    return kept["val_accuracy"]


# ---------------------------------------------------------------------- latency


def measure_latency(base, trained: dict, args) -> dict:
    """Compile (and verify) every graph, then time them all interleaved at each batch size."""
    import numpy as np

    from subtune.benchmarking.harness import Protocol, time_interleaved
    from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
    from subtune.compiler.plan import Plan
    from subtune.formats import load_base, load_task
    from subtune.runtimes.onnxruntime import session_from_bytes

    size = (args.image_size, args.image_size)
    tasks = {m: load_task(v["task"]) for m, v in trained.items() if m != "full"}
    graphs: dict[str, tuple] = {"base": (base, [])}
    graphs["all"] = (base, list(tasks.values()))
    for m in tasks:
        graphs[f"alone:{m}"] = (base, [tasks[m]])
        graphs[f"without:{m}"] = (base, [t for k, t in tasks.items() if k != m])
    if "full" in trained:
        graphs["full_model"] = (load_base(trained["full"]["task"]), [])
    sessions, verification, schedules = {}, {}, {}
    graph_dir = os.path.join(args.out, "graphs")
    os.makedirs(graph_dir, exist_ok=True)
    saved_path = os.path.join(graph_dir, "verification.json")
    saved = json.load(open(saved_path)) if os.path.isfile(saved_path) else {}
    files = {m: _file_digest(v["task"]) for m, v in trained.items()}
    members = {"base": [], "all": list(tasks), "full_model": ["full"]}
    members.update({f"alone:{m}": [m] for m in tasks})
    members.update({f"without:{m}": [k for k in tasks if k != m] for m in tasks})
    for key, (b, ts) in graphs.items():
        began = time.perf_counter()
        onnx_path = os.path.join(graph_dir, key.replace(":", "_") + ".onnx")
        made_from = {m: files[m] for m in members[key]}
        if key in saved and saved[key].get("tasks") == made_from and os.path.isfile(onnx_path):
            # compiled (and verified) by an earlier run from these very task files
            sessions[key] = session_from_bytes(onnx_path, threads=args.threads)
            schedules[key] = saved[key]["schedule"]
            if saved[key].get("verification"):
                verification[key] = saved[key]["verification"]
            print(f"  reused {onnx_path}", flush=True)
            continue
        # every task is verified alone and in the whole graph; the leave-one-out graphs are
        # subsets of the whole graph's tasks, so they skip verification to save time
        plan = compile_plan(Plan(b, ts, input_size=size), CompileOptions(verify=not key.startswith("without:")))
        data = serialize(plan)
        write_bytes(onnx_path, data)
        sessions[key] = session_from_bytes(data, threads=args.threads)
        schedules[key] = plan.report["schedule"]
        if "verification" not in plan.report:
            saved[key] = {"schedule": schedules[key], "tasks": made_from}
            write_text(saved_path, json.dumps(saved, indent=1))
            print(f"  compiled {key}: {len(ts)} task(s) (not verified: a subset of the whole graph)", flush=True)
            continue
        checks = plan.report["verification"]["checks"]
        verification[key] = {"max_relative_error": max(c["relative_error"] for c in checks),
                             "batches": sorted({c["batch"] for c in checks}),
                             "outputs": plan.output_names, "compile_seconds": round(time.perf_counter() - began, 1)}
        saved[key] = {"schedule": schedules[key], "verification": verification[key], "tasks": made_from}
        write_text(saved_path, json.dumps(saved, indent=1))
        print(f"  compiled and verified {key}: {len(ts)} task(s), max relative error "
              f"{verification[key]['max_relative_error']:.1e}", flush=True)
    if graphs["all"][1]:
        forks = [line for line in schedules["all"] if line.startswith("fork")]
        print(f"  the all-methods graph forks: {forks}", flush=True)
    protocol = Protocol(args.warmup, args.iters, args.repeats)
    by_batch = {}
    for batch in [int(b) for b in args.batch.split(",")]:
        images = np.random.default_rng(0).standard_normal((batch, 3, *size)).astype(np.float32)
        feeds = {"images": images}
        timed = time_interleaved({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()},
                                 batch=batch, protocol=protocol)
        ms = {k: t.median_ms for k, t in timed.items()}
        b0 = ms["base"]
        rows = {}
        noisy = sorted(k for k, t in timed.items() if t.noisy)
        for m in trained:
            if m == "full":
                alone = graph = ms["full_model"]  # a second whole model runs beside the base
            else:
                alone, graph = ms[f"alone:{m}"] - b0, ms["all"] - ms[f"without:{m}"]
            rows[m] = {"added_ms_alone": alone, "added_ms_in_graph": graph, "x_base_alone": (b0 + alone) / b0}
        by_batch[str(batch)] = {"median_ms": ms, "min_ms": {k: t.min_ms for k, t in timed.items()},
                                "spread": {k: t.spread for k, t in timed.items()}, "noisy": noisy,
                                "base_ms": b0, "all_ms": ms["all"], "all_x_base": ms["all"] / b0, "methods": rows}
        print(f"  batch {batch}: base {b0:.2f} ms, all-methods graph {ms['all']:.2f} ms ({ms['all'] / b0:.2f}x)",
              flush=True)
    return {"verification": verification, "schedule_all": schedules["all"], "batches": by_batch,
            "load_average_after": list(os.getloadavg())}


def _file_digest(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


# ---------------------------------------------------------------------- output


def added_ms(lat_b: dict, method: str) -> tuple[float, str]:
    """Added ms alone at one batch size, and what it was taken from: the fastest call of each
    variant when recorded (less sensitive to other load on a shared machine), else the median."""
    key = "min_ms" if "min_ms" in lat_b else "median_ms"
    ms = lat_b[key]
    value = ms["full_model"] if method == "full" else ms[f"alone:{method}"] - ms["base"]
    return value, "fastest call" if key == "min_ms" else "median"


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """Names on the front of (added ms, accuracy): nothing else is both cheaper and better."""
    front, best = [], float("-inf")
    for name, ms, acc in sorted(points, key=lambda p: (p[1], -p[2])):
        if acc > best:
            front.append(name)
            best = acc
    return front


def _pm(e: dict) -> str:
    if len(e.get("runs", [])) < 2:
        return f"{e['test_accuracy']:.4f}"
    return f"{e['test_accuracy']:.4f} ± {e['test_accuracy_std']:.4f}"


def format_table(r: dict) -> str:
    p, lat = r["protocol"], r["latency"]
    batches = list(lat["batches"])
    b1 = batches[0]
    front = pareto([(m, added_ms(lat["batches"][b1], m)[0], e["test_accuracy"]) for m, e in r["methods"].items()])
    basis = added_ms(lat["batches"][b1], next(iter(r["methods"])))[1]
    head = "| method | blocks | trainable params | test accuracy | train s |" + "".join(
        f" added ms b{b} alone / in graph | × base b{b} |" for b in batches) + " Pareto |"
    out = [f"EfficientNet-Lite0 (ImageNet) -> Fashion-MNIST: {p['train']} train / {p['val']} val / {p['test']} test "
           f"images at {p['image_size']}px, {p['training']['epochs']} epochs, seeds {p['seeds']}"
           + (" (mean ± std)" if len(p["seeds"]) > 1 else " (one seed: no spread)"), "", head,
           "| --- | --- | ---: | ---: | ---: |" + " ---: | ---: |" * len(batches) + " :---: |"]
    for m, e in r["methods"].items():
        blocks = "–" if not e["blocks"] else (str(e["blocks"][0]) if e["blocks"][0] == e["blocks"][1]
                                              else f"{e['blocks'][0]}-{e['blocks'][1]}")
        cells = "".join(f" {lat['batches'][b]['methods'][m]['added_ms_alone']:.2f} / "
                        f"{lat['batches'][b]['methods'][m]['added_ms_in_graph']:.2f} | "
                        f"{lat['batches'][b]['methods'][m]['x_base_alone']:.2f} |" for b in batches)
        out.append(f"| {LABELS[m]} | {blocks} | {e['params']:,} | {_pm(e)} | {e['seconds']:.1f} |{cells} "
                   f"{'●' if m in front else ''} |")
    base = ", ".join(f"b{b} {lat['batches'][b]['base_ms']:.2f} ms" for b in batches)
    allx = ", ".join(f"b{b} {lat['batches'][b]['all_ms']:.2f} ms = {lat['batches'][b]['all_x_base']:.2f}× base"
                     for b in batches)
    worst = max(v["max_relative_error"] for v in lat["verification"].values())
    spreads = ", ".join(f"b{b} up to {100 * max(lat['batches'][b]['spread'].values()):.0f} %" for b in batches)
    if all("min_ms" in lat["batches"][b] for b in batches):  # the fastest call: less sensitive to other load
        out += ["", "From the fastest call of each variant instead of the median (less sensitive to other load on a "
                "shared machine), added ms alone (× base):", "",
                "| method |" + "".join(f" batch {b} |" for b in batches), "| --- |" + " ---: |" * len(batches)]
        for meth in r["methods"]:
            cells = []
            for b in batches:
                mins = lat["batches"][b]["min_ms"]
                add = mins["full_model"] if meth == "full" else mins[f"alone:{meth}"] - mins["base"]
                cells.append(f" {add:.2f} ({(mins['base'] + add) / mins['base']:.2f}×) |")
            out.append(f"| {LABELS[meth]} |" + "".join(cells))
    m = r["machine"]
    out += ["", f"Base alone: {base}. One graph with every task: {allx}; verified (ONNX Runtime vs PyTorch, "
            f"batch 1 and 5), worst relative error {worst:.1e} over {len(lat['verification'])} graphs. "
            "Full finetuning is a second whole model, so its added latency is that model's.",
            f"Pareto front (test accuracy vs added ms alone at batch {b1}, {basis} of each variant): "
            f"{', '.join(LABELS[x] for x in front)}.",
            f"Timing spread (range of per-repeat medians / median): {spreads}"
            + (" — NOISY: differences smaller than the spread are not measured" if any(
                lat["batches"][b].get("noisy") for b in batches) else "") + ".",
            f"Training: the training loop only (caching frozen activations, once per split: "
            f"{r['cache_seconds']:.0f} s in all).",
            f"Machine: {m.get('cpu')}, {m.get('cores')} cores ({', '.join(r.get('cpu_flags', [])) or 'flags unknown'}), "
            f"{m.get('threads')} threads, load average {m.get('load_average')} at the start and "
            f"{lat.get('load_average_after')} after timing (shared machine: ratios from one interleaved run).",
            f"Wall time {r['wall_seconds'] / 60:.1f} min; command: {p['command']}"]
    return "\n".join(out)


def plot(r: dict, path: str) -> None:
    from subtune.benchmarking.plots import _pyplot, _save

    plt = _pyplot()
    lat = r["latency"]["batches"]
    batches = list(lat)
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, b in zip(axes[0], batches):
        pts = [(m, added_ms(lat[b], m)[0], e["test_accuracy"], e.get("test_accuracy_std", 0.0))
               for m, e in r["methods"].items()]
        basis = added_ms(lat[b], next(iter(r["methods"])))[1]
        front = set(pareto([(m, x, y) for m, x, y, _ in pts]))
        for m, x, y, s in pts:
            ax.errorbar([x], [y], yerr=[s], fmt="o", color="C3" if m in front else "C0", capsize=3)
            ax.annotate(LABELS[m], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        fx = sorted((x, y) for m, x, y, _ in pts if m in front)
        ax.step([x for x, _ in fx], [y for _, y in fx], where="post", color="C3", lw=1, label="Pareto front")
        ax.set_xlabel(f"added latency alone, ms (batch {b}, ONNX Runtime CPU, {basis})")
        ax.set_ylabel("test accuracy")
        base_ms = lat[b]["min_ms"]["base"] if "min_ms" in lat[b] else lat[b]["base_ms"]
        ax.set_title(f"batch {b}: base {base_ms:.2f} ms ({basis})")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    p = r["protocol"]
    fig.suptitle(f"Lite0 -> Fashion-MNIST ({p['train']} images, {p['training']['epochs']} epochs, seeds {p['seeds']})")
    _save(fig, path)
    plt.close(fig)


def _write(out_dir: str, results: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    table = format_table(results)
    write_text(os.path.join(out_dir, "results.json"), json.dumps(results, indent=2))
    write_text(os.path.join(out_dir, "table.md"), table + "\n")
    plot(results, os.path.join(out_dir, "tradeoff.png"))
    print(table)
    print(f"wrote {out_dir}/results.json, table.md, tradeoff.png", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
