"""A reduced-precision graph against the fp32 graph it came from, output by output.

Measured on the calibration images, in ONNX Runtime on CPU, in batches (so more than one batch
size runs): top-1 agreement with fp32, error statistics relative to the output's scale, and, for
a task output whose classes match the images' labels, accuracy at both precisions.

Which arithmetic is checked: a `--int8-target cpu` graph runs on ONNX Runtime's own int8 kernels,
as it will be deployed. A `tensorrt` graph runs with ONNX Runtime's QDQ fusion off (EMULATE_QDQ):
each DequantizeLinear -> op -> QuantizeLinear in float, which is the graph's arithmetic as
TensorRT defines it. ONNX Runtime's fused x86 kernels are no reference for it: on CPUs without
VNNI they add pairs of uint8 x int8 products in 16 bits, which saturates with 8-bit weights.

Thresholds fail the compile:
  1. top-1 agreement below `min_agreement` (every output);
  2. accuracy drop above `max_accuracy_drop` (outputs with labels);
  3. fp16 only: max error above `fp16_tolerance` of the output's scale;
  4. int8 only: the base output differs from the base-only INT8 graph's (the pinning property;
     a failure is a compiler bug).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from subtune.errors import VerificationError
from subtune.quantization.calibration import CalibrationSet

EVAL_BATCH = 16
EMULATE_QDQ = ("session.disable_quant_qdq", "1")  # ONNX Runtime session config: run Q/DQ as written


@dataclass
class OutputAgreement:
    output: str
    agreement: float  # fraction of images whose top-1 class matches the fp32 graph's
    max_abs_error: float
    mean_abs_error: float
    scale: float  # max |fp32 output|
    accuracy_fp32: float | None = None
    accuracy: float | None = None

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.scale, 1e-12)

    @property
    def accuracy_drop(self) -> float | None:
        return None if self.accuracy is None else self.accuracy_fp32 - self.accuracy

    def to_json(self) -> dict:
        return {**asdict(self), "relative_error": self.relative_error, "accuracy_drop": self.accuracy_drop}


def labelled_outputs(tasks, data: CalibrationSet) -> set[str]:
    """Task outputs the images' labels apply to: same class names (or, unnamed, the same count);
    synthetic tasks predict nothing and are left out."""
    if data.labels is None or not data.classes:
        return set()
    return {t.name for t in tasks if not t.meta.get("synthetic")
            and (t.classes == data.classes if t.classes else t.num_classes == len(data.classes))}


def run_batches(model: bytes, images: np.ndarray, output_names: list[str], *,
                emulate_qdq: bool = False) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if emulate_qdq:
        opts.add_session_config_entry(*EMULATE_QDQ)
    session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    parts = [session.run(output_names, {"images": images[i:i + EVAL_BATCH]}) for i in range(0, len(images), EVAL_BATCH)]
    return [np.concatenate([p[k] for p in parts]).astype(np.float32) for k in range(len(output_names))]


def agreement(refs: list[np.ndarray], gots: list[np.ndarray], output_names: list[str], data: CalibrationSet,
              labelled: set[str] = frozenset()) -> list[OutputAgreement]:
    """Rows for outputs computed by the fp32 graph (`refs`) and the reduced one (`gots`) on `data`."""
    rows = []
    for name, ref, got in zip(output_names, refs, gots):
        err = np.abs(got.astype(np.float64) - ref)
        row = OutputAgreement(name, float((got.argmax(1) == ref.argmax(1)).mean()), float(err.max()), float(err.mean()),
                              float(np.abs(ref).max()))
        if name in labelled:
            row.accuracy_fp32 = float((ref.argmax(1) == data.labels).mean())
            row.accuracy = float((got.argmax(1) == data.labels).mean())
        rows.append(row)
    return rows


def base_output_difference(reduced: bytes, base_only: bytes, images: np.ndarray, *, emulate_qdq: bool = False) -> float:
    """max |base output of the multi-task graph - base output of the base-only graph|."""
    (got,) = run_batches(reduced, images, ["base"], emulate_qdq=emulate_qdq)
    (ref,) = run_batches(base_only, images, ["base"], emulate_qdq=emulate_qdq)
    return float(np.abs(got - ref).max())


def check_thresholds(rows: list[OutputAgreement], precision: str, *, min_agreement: float, max_accuracy_drop: float,
                     fp16_tolerance: float) -> None:
    for r in rows:
        where = f"{precision} output {r.output!r}"
        if r.agreement < min_agreement:  # rule 1
            raise VerificationError(f"{where}: top-1 agreement with fp32 is {r.agreement:.1%}, below --min-agreement "
                                    f"{min_agreement:.1%}; calibrate on more or more representative images, try "
                                    "another --calibration-method, or relax the threshold")
        if r.accuracy_drop is not None and r.accuracy_drop > max_accuracy_drop:  # rule 2
            raise VerificationError(f"{where}: accuracy {r.accuracy:.1%} vs {r.accuracy_fp32:.1%} in fp32, a drop of "
                                    f"{r.accuracy_drop:.1%} > --max-accuracy-drop {max_accuracy_drop:.1%}; try another "
                                    "--calibration-method or more images")
        if precision == "fp16" and r.relative_error > fp16_tolerance:  # rule 3
            raise VerificationError(f"{where} differs from fp32 by {r.relative_error:.2e} of its scale, tolerance "
                                    f"{fp16_tolerance:.0e}; this graph overflows or underflows in fp16")


def check_base_pinned(difference: float) -> None:  # rule 4
    if difference != 0.0:
        raise VerificationError(f"int8 base output moves by {difference:.3e} when tasks are added (expected 0): "
                                "this is a compiler bug, please report it with --debug output")
