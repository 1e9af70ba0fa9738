"""The one runner interface every runtime implements (after Polygraphy's BaseRunner).

    with OnnxrtRunner(SessionFromOnnx("model.onnx")) as runner:
        outputs = runner.infer({"images": batch})      # {output name: np.ndarray}
        runner.last_inference_time()                    # seconds spent in the runtime call
        runner.describe()                               # runtime, provider, settings

A runner is built from a *loader* (a small callable, nothing heavy happens until it is called)
and does its expensive work in `activate()`: creating the session, deserializing the engine,
allocating buffers. Subclasses implement the `*_impl` methods only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from subtune.errors import SubtuneError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """An input's shape (None for a dynamic axis, such as the batch) and NumPy dtype name."""

    shape: tuple[int | None, ...]
    dtype: str


class BaseRunner:
    runtime = "base"  # shown by describe(); set by each subclass

    def __init__(self, name: str | None = None):
        self.name = name or self.runtime
        self.is_active = False
        self.inference_time: float | None = None
        self._inputs: dict[str, TensorSpec] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> "BaseRunner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def activate(self) -> None:
        if self.is_active:
            return  # activating twice is harmless; the first activation's state stays
        self.activate_impl()
        self.is_active = True
        self._inputs = self.input_metadata_impl()  # cached: infer checks feeds against it every call

    def deactivate(self) -> None:
        if not self.is_active:
            return
        self.deactivate_impl()
        self.inference_time = None
        self.is_active = False

    # -- inference ------------------------------------------------------------------------
    def infer(self, feeds: dict[str, "np.ndarray"]) -> dict[str, "np.ndarray"]:
        """Run once. Outputs may live in buffers the next call reuses: copy them to keep them."""
        self._require_active("infer")
        if feeds.keys() != self._inputs.keys():
            raise SubtuneError(f"{self.name}: feeds have inputs {sorted(feeds)}, the model takes {sorted(self._inputs)}")
        return self.infer_impl(feeds)

    def last_inference_time(self) -> float | None:
        """Seconds the last `infer` spent in the runtime itself (no feed checks, no Python glue)."""
        return self.inference_time

    def input_metadata(self) -> dict[str, TensorSpec]:
        self._require_active("input_metadata")
        return dict(self._inputs)

    def output_names(self) -> list[str]:
        self._require_active("output_names")
        return self.output_names_impl()

    def describe(self) -> dict[str, Any]:
        """The runtime, its version, provider/device and the settings that change timings."""
        return {"runtime": self.runtime, "name": self.name, **self.describe_impl()}

    def _require_active(self, what: str) -> None:
        if not self.is_active:
            raise RuntimeError(f"{self.name}: activate the runner (use `with runner:`) before {what}()")

    # -- for subclasses -------------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, feeds: dict[str, "np.ndarray"]) -> dict[str, "np.ndarray"]:
        raise NotImplementedError

    def input_metadata_impl(self) -> dict[str, TensorSpec]:
        raise NotImplementedError

    def output_names_impl(self) -> list[str]:
        raise NotImplementedError

    def describe_impl(self) -> dict[str, Any]:
        return {}
