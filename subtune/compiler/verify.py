"""Verification: the ONNX graph in ONNX Runtime (CPU) against PyTorch eager, model by model.

Error measure, per output: max |onnx - reference| / max |reference| (relative to the output's
scale). Checked at batch 1 and at batch sizes other than the export's, so a batch size baked
into the graph cannot pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from subtune.compiler.reference import reference_outputs
from subtune.errors import VerificationError


@dataclass
class OutputCheck:
    batch: int
    output: str
    reference: str  # what it was compared with
    max_abs_error: float
    scale: float

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.scale, 1e-12)


def relative_error(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    return float(np.abs(got.astype(np.float64) - ref).max()), float(np.abs(ref).max())


def verify(onnx_bytes: bytes, base_model, backbone, tasks, output_names: list[str], *, input_size,
           batches=(1, 5), tolerance: float = 1e-4, seed: int = 0) -> list[OutputCheck]:
    from subtune.runtimes.onnxruntime import session_from_bytes

    session = session_from_bytes(onnx_bytes)
    g = torch.Generator().manual_seed(seed)
    checks: list[OutputCheck] = []
    for batch in batches:
        images = torch.randn(batch, 3, *input_size, generator=g)
        got = session.run(output_names, {"images": images.numpy()})
        refs = reference_outputs(base_model, backbone, tasks, images)
        for name, out, ref in zip(output_names, got, refs):
            what = "base model alone" if name == "base" else f"task {name} as its own full model"
            if out.shape != tuple(ref.shape):
                raise VerificationError(f"output {name!r} at batch {batch}: shape {out.shape}, reference {tuple(ref.shape)}")
            checks.append(OutputCheck(batch, name, what, *relative_error(out, ref.numpy())))
    bad = [c for c in checks if not c.relative_error <= tolerance]
    if bad:
        worst = max(bad, key=lambda c: c.relative_error)
        raise VerificationError(
            f"verification failed: output {worst.output!r} at batch {worst.batch} differs from the {worst.reference} "
            f"by {worst.relative_error:.2e} (relative), tolerance {tolerance:.0e}; this is a compiler bug, "
            "please report it with --debug output")
    return checks


def checks_to_json(checks: list[OutputCheck]) -> list[dict]:
    return [{**asdict(c), "relative_error": c.relative_error} for c in checks]
