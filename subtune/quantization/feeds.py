"""What a compiled graph is fed when it is calibrated, checked or timed here: the images, and, for a
graph with a task mask (a second input `tasks`, bool [batch, k]: task selection, issue #20), all
true, so every task runs on every image and every output is calibrated and checked. Any other
input is refused with a one-line error.
"""

from __future__ import annotations

import numpy as np

from subtune.errors import SubtuneError

IMAGES = "images"


def feeds(inputs, images: np.ndarray) -> dict[str, np.ndarray]:
    """`inputs`: the graph's inputs as (name, element type, shape) with the element type a numpy
    dtype or ONNX Runtime's "tensor(bool)" form and the shape's second entry the task count."""
    out = {IMAGES: images}
    for name, dtype, shape in inputs:
        if name == IMAGES:
            continue
        boolean = str(dtype) in ("tensor(bool)", "bool", "BOOL")
        k = shape[1] if shape is not None and len(shape) == 2 else None
        if not boolean or not isinstance(k, int):
            raise SubtuneError(f"graph input {name!r} ({dtype}, shape {list(shape) if shape else shape}): expected "
                               "only `images` and a task mask `tasks` (bool [batch, tasks]); quantise the graph "
                               "subtune compiled")
        out[name] = np.ones((len(images), k), dtype=bool)
    return out


def session_inputs(session) -> list[tuple]:
    return [(i.name, i.type, i.shape) for i in session.get_inputs()]


def model_inputs(model) -> list[tuple]:
    """The inputs of an onnx_ir model."""
    return [(v.name, v.dtype.name if v.dtype is not None else None,
             [d if isinstance(d, int) else None for d in v.shape] if v.shape is not None else None)
            for v in model.graph.inputs]
