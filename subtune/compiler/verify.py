"""Verification: the ONNX graph in ONNX Runtime (CPU) against PyTorch eager, model by model.

Error measure, per output: max |onnx - reference| / max |reference| (relative to the output's
scale). Checked at the batch sizes asked for (`subtune-compile --verify-batches`, default 1 and
5); the compiler refuses a set holding only the export's batch size (2), so a batch size baked
into the graph cannot pass.

A task-select graph (`--task-select`: a second input `tasks`, [batch, k] bool) is run at each
batch size under every mask of MASKS (all true, none, one random task per image, random), on the
same images, and checked:
  1. every selected (image, task) output against the task run alone, within the tolerance;
  2. the base output against the base alone, within the tolerance, and bit for bit the same
     under every mask (the base does not depend on the selection);
  3. a task's output is NaN exactly in the rows whose column is false, and only there.
Properties 2 (bit for bit) and 3 are exact: a failure is a compiler bug whatever the tolerance.

What a failure says (VerificationError): "a compiler bug" only where the inputs were sane (the
reference finite and not all zeros) and the error exceeds the default tolerance; an error within
the default but above a tighter `--tolerance` is about that tolerance (float32 sums in another
order differ in the last bits).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from subtune.compiler.reference import reference_outputs
from subtune.errors import VerificationError
from subtune.passes.task_rows_from_mask import MASK_INPUT

DEFAULT_TOLERANCE = 1e-4  # CompileOptions.tolerance, --tolerance
MASKS = ("all", "none", "one task per image", "random")  # task selection: the masks every batch size runs under


@dataclass
class OutputCheck:
    batch: int
    output: str
    reference: str  # what it was compared with
    max_abs_error: float
    scale: float
    mask: str | None = None  # task selection: the mask it ran under (MASKS)
    rows: int | None = None  # task selection: the rows compared (those that asked for the output)

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.scale, 1e-12)


def relative_error(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    if got.size == 0:
        return 0.0, float(np.abs(ref).max()) if ref.size else 0.0
    return float(np.abs(got.astype(np.float64) - ref).max()), float(np.abs(ref).max())


def task_masks(batch: int, k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The masks of MASKS at `batch` for `k` tasks (random ones from `rng`)."""
    return {"all": np.ones((batch, k), dtype=bool), "none": np.zeros((batch, k), dtype=bool),
            "one task per image": np.eye(k, dtype=bool)[rng.integers(0, k, batch)],
            "random": rng.random((batch, k)) < 0.5}


def verify(model: bytes | str | os.PathLike, base_model, backbone, tasks, output_names: list[str], *, input_size,
           batches=(1, 5), tolerance: float = DEFAULT_TOLERANCE, seed: int = 0,
           task_select: bool = False) -> list[OutputCheck]:
    """`model`: serialized ONNX, or a path (a graph over 2 GiB, with its external data beside it).
    Raises VerificationError with every check made in `.checks` when an output is out of tolerance
    (or, with `task_select`, breaks an exact property of the module docstring)."""
    from subtune.runtimes.onnxruntime import session_from_bytes

    # A graph given as a path is the compiler's, its weights in a file beside it (external data): ONNX
    # Runtime uses them from the mapped file, in memory once. So no prepacked copy, no arena keeping a
    # run's memory, and graph optimisations up to "extended": level "all" adds the NCHWc layout
    # transformation, which copies every convolution's weights while loading (measured: a 520 MB graph
    # took 0.7-1.04 GB to load, 0.53 GB at "extended", whose runs were 20% slower). A task-select graph
    # runs at "all", as it is deployed: rule 2's bit-for-bit base holds there, while at "extended" the
    # base's last bits were seen to change with the rows the mask selects (tests/compiler/test_task_select.py).
    in_memory = isinstance(model, bytes)
    session = session_from_bytes(model if in_memory else str(model), prepack=in_memory, arena=in_memory,
                                 optimization="all" if in_memory or task_select else "extended")
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(batch, 3, *input_size, generator=g) for batch in batches]
    rng = np.random.default_rng(seed)
    runs = []  # (batch index, mask name, mask, outputs)
    for i, x in enumerate(images):
        if not task_select:
            runs.append((i, None, None, session.run(output_names, {"images": x.numpy()})))
            continue
        for name, mask in task_masks(len(x), len(output_names) - 1, rng).items():
            runs.append((i, name, mask, session.run(output_names, {"images": x.numpy(), MASK_INPUT: mask})))
    del session  # before the reference runs: a large graph need not be in memory twice
    # The reference runs once on all the images (eval-mode models treat each image on its own),
    # so each task's full model is built once.
    refs_all = reference_outputs(base_model, backbone, tasks, torch.cat(images))
    starts = [sum(batches[:i]) for i in range(len(batches))]
    checks: list[OutputCheck] = []
    exact: list[str] = []  # broken exact properties (task selection)
    first_base: dict[int, np.ndarray] = {}
    for i, mask_name, mask, outs in runs:
        batch, start = batches[i], starts[i]
        refs = [r[start:start + batch].numpy() for r in refs_all]
        for j, (name, out, ref) in enumerate(zip(output_names, outs, refs)):
            what = "base model alone" if name == "base" else f"task {name} as its own full model"
            if out.shape != ref.shape:
                raise VerificationError(f"output {name!r} at batch {batch}: shape {out.shape}, reference {ref.shape}")
            if mask is None:
                checks.append(OutputCheck(batch, name, what, *relative_error(out, ref)))
                continue
            where = f"output {name!r} at batch {batch} under the mask {mask_name!r}"
            if name == "base":  # rule 2
                checks.append(OutputCheck(batch, name, what, *relative_error(out, ref), mask_name, batch))
                if i in first_base and not np.array_equal(out, first_base[i]):
                    exact.append(f"{where} differs from the base under the mask {MASKS[0]!r} (the base must not "
                                 "depend on the selection)")
                first_base.setdefault(i, out)
                continue
            asked = mask[:, j - 1]
            unfilled = ~np.isnan(out).all(axis=1)
            if not np.array_equal(unfilled, asked) or np.isnan(out[asked]).any():  # rule 3
                exact.append(f"{where} holds values in rows {np.flatnonzero(unfilled).tolist()}, expected exactly "
                             f"the rows that asked for it, {np.flatnonzero(asked).tolist()}, and NaN elsewhere")
            if asked.any():  # rule 1
                err, _ = relative_error(out[asked], ref[asked])
                checks.append(OutputCheck(batch, name, what, err, relative_error(ref, ref)[1], mask_name,
                                          int(asked.sum())))
    bad = [c for c in checks if not c.relative_error <= tolerance]
    if bad or exact:
        error = VerificationError(_failure(bad, exact, tolerance))
        error.checks = checks  # the whole table, for the report a failed compile still writes
        raise error
    return checks


def _failure(bad: list[OutputCheck], exact: list[str], tolerance: float) -> str:
    """What went wrong, and whose it is (the module docstring's last paragraph)."""
    if exact:
        more = f" (and {len(exact) - 1} more)" if len(exact) > 1 else ""
        return f"verification failed: {exact[0]}{more}; this is a compiler bug, please report it with --debug output"
    # inputs that are not sane first: a reference that is not finite, or all zeros
    worst = max(bad, key=lambda c: (not np.isfinite(c.scale), c.scale == 0, not np.isfinite(c.relative_error),
                                    c.relative_error if np.isfinite(c.relative_error) else 0.0))
    where = f"output {worst.output!r} at batch {worst.batch}" + (f" under the mask {worst.mask!r}" if worst.mask else "")
    if not np.isfinite(worst.scale):
        return (f"verification failed: the reference for {where} ({worst.reference}, in PyTorch) is not finite: "
                f"the model itself computes NaN or inf on random images, before any compiling; check the "
                f"{'base' if worst.output == 'base' else 'task'}'s weights")
    if worst.scale == 0:
        return (f"verification failed: the reference for {where} ({worst.reference}) is all zeros, so an error "
                f"relative to it means nothing (max |error| {worst.max_abs_error:.2e}); check the "
                f"{'base' if worst.output == 'base' else 'task'}'s head (all-zero weights?)")
    measured = (f"verification failed: {where} differs from the {worst.reference} by {worst.relative_error:.2e} "
                f"(relative), tolerance {tolerance:.0e}")
    if worst.relative_error <= DEFAULT_TOLERANCE:
        return (f"{measured}: within the default tolerance {DEFAULT_TOLERANCE:.0e}, above the one asked for; ONNX Runtime "
                "and PyTorch add float32 terms in different orders, so they agree to about 1e-6 of an output's "
                f"scale, not bit for bit: loosen --tolerance (e.g. the default {DEFAULT_TOLERANCE:.0e})")
    return f"{measured}; this is a compiler bug, please report it with --debug output"


def checks_to_json(checks: list[OutputCheck], tolerance: float | None = None) -> list[dict]:
    """Each check as a dict (the task-selection fields only where set); with `tolerance`, also
    whether it passed."""
    rows = []
    for c in checks:
        row = {k: v for k, v in asdict(c).items() if v is not None or k not in ("mask", "rows")}
        rows.append({**row, "relative_error": c.relative_error})
    if tolerance is not None:
        for row in rows:
            row["passed"] = row["relative_error"] <= tolerance
    return rows
