"""PyTorch eager: the reference runtime, and the baseline a user gets without exporting.

    with TorchRunner(module, inputs={"images": TensorSpec((None, 3, 224, 224), "float32")},
                     output_names=["base", "t1"]) as runner:
        runner.infer({"images": batch})
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from subtune.errors import SubtuneError
from subtune.runtimes.base import BaseRunner, TensorSpec

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


class TorchRunner(BaseRunner):
    """Calls `module(*inputs)` under inference_mode; the outputs (a tensor or a tuple) are named
    by `output_names` in order."""

    runtime = "torch"

    def __init__(self, module: "nn.Module | Callable[[], nn.Module]", *, inputs: dict[str, TensorSpec],
                 output_names: list[str], device: str = "cpu", threads: int | None = None, name: str | None = None):
        """`module`: an nn.Module, or a loader that makes one. `threads` sets torch's intra-op thread
        count (process-wide) while the runner is active; deactivating restores the previous one."""
        super().__init__(name)
        self._source = module
        self._inputs_spec = dict(inputs)
        self._output_names = list(output_names)
        self.device, self.threads = device, threads
        self.module = None

    def activate_impl(self) -> None:
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SubtuneError(f"{self.name}: device {self.device} asked for, but torch sees no CUDA GPU")
        self._threads_before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        from torch import nn

        module = self._source if isinstance(self._source, nn.Module) else self._source()
        if self.device != "cpu":  # .to() moves in place: a copy leaves the caller's module on the CPU
            import copy

            module = copy.deepcopy(module)
        self.module = module.eval().to(self.device)
        self._sync = torch.cuda.synchronize if self.device.startswith("cuda") else (lambda: None)

    def deactivate_impl(self) -> None:
        import torch

        self.module = None
        torch.set_num_threads(self._threads_before)

    def input_metadata_impl(self) -> dict[str, TensorSpec]:
        return dict(self._inputs_spec)

    def output_names_impl(self) -> list[str]:
        return list(self._output_names)

    def infer_impl(self, feeds: dict[str, "np.ndarray"]) -> dict[str, "np.ndarray"]:
        import torch

        args = [torch.from_numpy(feeds[n]).to(self.device) for n in self._inputs_spec]
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = self.module(*args)
        self._sync()
        self.inference_time = time.perf_counter() - start
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
        if len(outputs) != len(self._output_names):
            raise SubtuneError(f"{self.name}: the module returned {len(outputs)} outputs, "
                               f"but {len(self._output_names)} names were given ({self._output_names})")
        return {n: t.cpu().numpy() for n, t in zip(self._output_names, outputs)}

    def describe_impl(self) -> dict[str, Any]:
        import torch

        return {"version": torch.__version__, "device": self.device, "intra_op_threads": torch.get_num_threads()}
