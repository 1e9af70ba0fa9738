"""subtune: SubTuning toolkit and multi-task deployment compiler.

    import subtune
    trained = subtune.train("base.pt", "imagefolder:dogs", "dogs.pt", method=subtune.SubTuning("layer3"))
    result = subtune.compile("base.pt", ["dogs.pt", "cats.pt"], "model.onnx")

The API (subtune/api/: compile, train, profile, prune, prune_sweep, select, benchmark,
benchmark_compare, benchmark_profile, triton_repo, rollout, their result classes and the option objects
train and profile take: SubTuning, Head2Toe, LoRA, Linear, Full, DataOptions, TrainingOptions,
RayOptions; load_graph, which runs a compiled
graph) is imported on
first use, and heavy libraries (torch, onnx, onnxruntime, tensorrt) where they are used, so
`import subtune` and argument parsing stay cheap. Library code logs on the "subtune" logger
and never prints.
"""

import logging

from subtune.version import __version__

_API = {
    "compile", "CompileResult", "train", "TrainResult", "profile", "ProfileResult", "ProfileInterrupted",
    "prune", "PruneResult", "prune_sweep", "SweepResult",
    "select", "SelectResult", "benchmark", "benchmark_compare", "benchmark_profile", "BenchResult",
    "triton_repo", "Repository", "rollout", "RolloutResult", "load_graph",
    "SubTuning", "Head2Toe", "LoRA", "Linear", "Full", "DataOptions", "TrainingOptions", "RayOptions",
}

__all__ = sorted(_API) + ["__version__"]

logging.getLogger("subtune").addHandler(logging.NullHandler())


def __getattr__(name: str):
    if name in _API:
        from subtune import api

        return getattr(api, name)
    raise AttributeError(f"module 'subtune' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_API})
