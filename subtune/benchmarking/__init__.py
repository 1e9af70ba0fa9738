"""Latency benchmarking: measuring returns dataclasses; formatting is separate.

    harness.py    the paper's protocol (warm-up, R repeats of N runs), variants interleaved
    latency.py    one model file at several batch sizes             (subtune-bench MODEL)
    variants.py   (a) base, (b) naive, (c) split, (d) compiled      (subtune-bench --compare)
    compare.py    time the variants side by side, with the cost model's prediction
    costmodel.py  per-layer FLOPs and weight bytes; the §3.1 compute/IO model
    tradeoff.py   accuracy against added latency, Pareto front, budget (subtune-bench --profile)
    overhead.py   the harness' own overhead on a trivial model
    machine.py    the machine and library versions stored with every result
    report.py     text tables and JSON
    plots.py      PNG figures

Nothing heavy is imported here: `import subtune.benchmarking` stays cheap.
"""
