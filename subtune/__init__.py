"""subtune: SubTuning toolkit and multi-task deployment compiler.

    import subtune
    result = subtune.compile("base.pt", ["dogs.pt", "cats.pt"], "model.onnx")

The API (subtune/api.py) is imported on first use, and heavy libraries (torch, onnx,
onnxruntime, tensorrt) where they are used, so `import subtune` and argument parsing stay cheap.
Library code logs on the "subtune" logger and never prints.
"""

import logging

__version__ = "0.1.0"

__all__ = ["CompileResult", "compile", "__version__"]

logging.getLogger("subtune").addHandler(logging.NullHandler())

_API = {"compile", "CompileResult"}


def __getattr__(name: str):
    if name in _API:
        from subtune import api

        return getattr(api, name)
    raise AttributeError(f"module 'subtune' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_API})
