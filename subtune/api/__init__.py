"""The Python API: every command's work as one function that takes paths or loaded objects,
writes atomically (a temporary file renamed into place) and returns a result with its report.
The command line parses arguments, calls one of these and prints.

    import subtune

    trained = subtune.train("base.pt", "imagefolder:dogs", "dogs.pt", method=subtune.SubTuning("layer3"))
    result = subtune.compile("base.pt", [trained.task], "model.onnx")

    compile(base, tasks, output, ...)            -> CompileResult   `subtune-compile`
    train(base, data, output=None, *, method)    -> TrainResult     `subtune train`
    profile(base, data, output=None, ...)        -> ProfileResult   `subtune profile` (finetuning profile)
    prune(base, task, output=None, ratio=...)    -> PruneResult     `subtune prune`
    prune_sweep(base, task, data, output, ...)   -> SweepResult     `subtune prune-sweep`
    select(base, task, pool, budget, ...)        -> SelectResult    `subtune select` (active learning)
    benchmark(model, ...)                        -> BenchResult     `subtune-bench MODEL`
    benchmark_compare(base, tasks, ...)          -> BenchResult     `subtune-bench --compare`
    benchmark_profile(base, profile, ...)        -> BenchResult     `subtune-bench --profile`
    triton_repo(graph, output, ...)              -> Repository      `subtune triton-repo`
    rollout(repository, new_graph, ...)          -> RolloutResult   `subtune rollout`
    load_graph(path, provider=..., threads=...)  -> CompiledGraphRunner  run a compiled graph from Python

`train` and `profile` take typed option objects (subtune.training.options, also here): the
method, SubTuning(blocks, ...), Head2Toe(...), LoRA(...), Linear() or Full(), each taking only its
own settings; DataOptions, TrainingOptions and RayOptions.

User errors raise subtune.errors.SubtuneError (one line, says what to do), naming the Python
parameters in backticks (`max_blocks`; the command line shows its flags instead). Progress and
what was written are logged on the "subtune" logger; nothing here prints. A call leaves the
process as it found it (torch's thread count, the environment, signal handlers, the umask). (`benchmark` is not
`bench`: `subtune.benchmarking` is the benchmarking package.)

Each verb lives in its own module, imported on first use, and heavy libraries (torch, onnx,
onnxruntime) inside the functions, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib

# public name -> the module under subtune.api that defines it
WHERE = {
    "compile": "_compile", "CompileResult": "_compile",
    "train": "_train", "TrainResult": "_train",
    "profile": "_profile", "ProfileResult": "_profile", "ProfileInterrupted": "_profile",
    "prune": "_prune", "PruneResult": "_prune", "prune_sweep": "_prune", "SweepResult": "_prune",
    "select": "_select", "SelectResult": "_select",
    "benchmark": "_bench", "benchmark_compare": "_bench", "benchmark_profile": "_bench", "BenchResult": "_bench",
    "triton_repo": "_serving", "Repository": "_serving",
    "rollout": "_rollout", "RolloutResult": "_rollout",
    **{name: "_options" for name in ("SubTuning", "Head2Toe", "LoRA", "Linear", "Full", "DataOptions",
                                     "TrainingOptions", "RayOptions")},
    "load_graph": "_run",
}

__all__ = sorted(WHERE)


def __getattr__(name: str):
    if name in WHERE:
        value = getattr(importlib.import_module(f"subtune.api.{WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'subtune.api' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *WHERE})
