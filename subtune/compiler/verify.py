"""Verification: the ONNX graph in ONNX Runtime (CPU) against PyTorch eager, model by model.

Error measure, per output: max |onnx - reference| / max |reference| (relative to the output's
scale). Checked at batch 1 and at batch sizes other than the export's, so a batch size baked
into the graph cannot pass.
"""

from __future__ import annotations

import os
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


def verify(model: bytes | str | os.PathLike, base_model, backbone, tasks, output_names: list[str], *, input_size,
           batches=(1, 5), tolerance: float = 1e-4, seed: int = 0) -> list[OutputCheck]:
    """`model`: serialized ONNX, or a path (a graph over 2 GiB, with its external data beside it).
    Raises VerificationError with every check made in `.checks` when an output is out of tolerance."""
    from subtune.runtimes.onnxruntime import session_from_bytes

    # A graph given as a path is the compiler's, its weights in a file beside it (external data): ONNX
    # Runtime uses them from the mapped file, in memory once. So no prepacked copy, no arena keeping a
    # run's memory, and graph optimisations up to "extended": level "all" adds the NCHWc layout
    # transformation, which copies every convolution's weights while loading (measured: a 520 MB graph
    # took 1.04 GB to load, 0.53 GB at "extended", whose runs were 20% slower).
    in_memory = isinstance(model, bytes)
    session = session_from_bytes(model if in_memory else str(model), prepack=in_memory, arena=in_memory,
                                 optimization="all" if in_memory else "extended")
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(batch, 3, *input_size, generator=g) for batch in batches]
    got = [session.run(output_names, {"images": x.numpy()}) for x in images]
    del session  # before the reference runs: a large graph need not be in memory twice
    # The reference runs once on all the images (eval-mode models treat each image on its own),
    # so each task's full model is built once.
    refs_all = reference_outputs(base_model, backbone, tasks, torch.cat(images))
    starts = [sum(batches[:i]) for i in range(len(batches))]
    checks: list[OutputCheck] = []
    for batch, start, outs in zip(batches, starts, got):
        refs = [r[start:start + batch] for r in refs_all]
        for name, out, ref in zip(output_names, outs, refs):
            what = "base model alone" if name == "base" else f"task {name} as its own full model"
            if out.shape != tuple(ref.shape):
                raise VerificationError(f"output {name!r} at batch {batch}: shape {out.shape}, reference {tuple(ref.shape)}")
            checks.append(OutputCheck(batch, name, what, *relative_error(out, ref.numpy())))
    bad = [c for c in checks if not c.relative_error <= tolerance]
    if bad:
        worst = max(bad, key=lambda c: c.relative_error)
        error = VerificationError(
            f"verification failed: output {worst.output!r} at batch {worst.batch} differs from the {worst.reference} "
            f"by {worst.relative_error:.2e} (relative), tolerance {tolerance:.0e}; this is a compiler bug, "
            "please report it with --debug output")
        error.checks = checks  # the whole table, for the report a failed compile still writes
        raise error
    return checks


def checks_to_json(checks: list[OutputCheck], tolerance: float | None = None) -> list[dict]:
    """Each check as a dict; with `tolerance`, also whether it passed."""
    rows = [{**asdict(c), "relative_error": c.relative_error} for c in checks]
    if tolerance is not None:
        for row in rows:
            row["passed"] = row["relative_error"] <= tolerance
    return rows
