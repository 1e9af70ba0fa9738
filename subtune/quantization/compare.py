"""A reduced-precision graph against the fp32 graph it came from, output by output.

Measured on the check images (heldout.py: the data's test split, disjoint from calibration and
from the tasks' training data), in ONNX Runtime on CPU, in batches (so more than one batch size
runs; a --task-select graph with every task asked for on every image), per output:
  agreement            top-1 agreement with fp32, all images
  confident_agreement  the same where fp32 is confident (max softmax >= CONFIDENT): a base whose
                       ImageNet classes the images do not have makes many close calls, where a
                       flip means nothing
  top5_overlap         |top-5 fp32 & top-5 reduced| / 5, mean over images
  relative_logit_error mean over images of ||reduced - fp32|| / ||fp32||
  accuracy             at both precisions, for outputs the check labels apply to

Each graph runs once per check set (`check_outputs`): quantize's runs of the fp32 graph and of
the INT8 graph it settles on are what verify precision judges.

Which arithmetic is checked: a `--int8-target cpu` graph runs on ONNX Runtime's own int8 kernels,
as it will be deployed. A `tensorrt` graph runs with ONNX Runtime's QDQ fusion off (EMULATE_QDQ):
each DequantizeLinear -> op -> QuantizeLinear in float, which is the graph's arithmetic as
TensorRT defines it. ONNX Runtime's fused x86 kernels are no reference for it: on CPUs without
VNNI they add pairs of uint8 x int8 products in 16 bits, which saturates with 8-bit weights.

Thresholds fail the compile (defaults in PrecisionOptions, with the figures behind them):
  1. a labelled output loses more than `max_accuracy_drop` of accuracy;
  2. an unlabelled output (the base) agrees with fp32 on fewer than `min_agreement` of the
     confident images (of all images where fewer than MIN_CONFIDENT are confident);
  3. fp16 only: max error above `fp16_tolerance` of the output's scale;
  4. int8 only: the base output differs from the base-only INT8 graph's (the pinning property;
     a failure is a compiler bug).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from subtune.errors import VerificationError
from subtune.quantization.calibration import CalibrationSet
from subtune.quantization.heldout import CheckSet
from subtune.runtimes.onnxruntime import every_task_feeds, make_session

EVAL_BATCH = 16
CONFIDENT = 0.5  # max softmax probability at which fp32's top-1 counts as a decision
MIN_CONFIDENT = 20  # fewer confident images than this: judge agreement on all images
TOP_K = 5
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
    confident_agreement: float | None = None  # top-1 agreement where fp32's max softmax >= CONFIDENT
    confident_images: int = 0
    top5_overlap: float | None = None
    relative_logit_error: float | None = None  # mean over images of ||got - ref|| / ||ref||
    images: int = 0
    labelled_images: int = 0

    @property
    def judged_agreement(self) -> tuple[float, str]:
        """The agreement rule 2 judges, and on which images."""
        if self.confident_agreement is not None and self.confident_images >= MIN_CONFIDENT:
            return self.confident_agreement, f"{self.confident_images} images where fp32 is confident"
        return self.agreement, f"all {self.images} images" if self.images else "all images"

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.scale, 1e-12)

    @property
    def accuracy_drop(self) -> float | None:
        return None if self.accuracy is None else self.accuracy_fp32 - self.accuracy

    def to_json(self) -> dict:
        return {**asdict(self), "relative_error": self.relative_error, "accuracy_drop": self.accuracy_drop}

    def passes(self, precision: str, *, min_agreement: float, max_accuracy_drop: float,
               fp16_tolerance: float) -> bool:
        try:
            check_thresholds([self], precision, min_agreement=min_agreement, max_accuracy_drop=max_accuracy_drop,
                             fp16_tolerance=fp16_tolerance)
        except VerificationError:
            return False
        return True


def labelled_outputs(tasks, data: CalibrationSet) -> set[str]:
    """Task outputs the images' labels apply to: same class names (or, unnamed, the same count);
    synthetic tasks predict nothing and are left out."""
    if data.labels is None or not data.classes:
        return set()
    return {t.name for t in tasks if not t.meta.get("synthetic")
            and (t.classes == data.classes if t.classes else t.num_classes == len(data.classes))}


def run_batches(model: bytes | Path, images: np.ndarray, output_names: list[str], *,
                emulate_qdq: bool = False) -> list[np.ndarray]:
    session = make_session(model, config=dict([EMULATE_QDQ]) if emulate_qdq else None)
    parts = [session.run(output_names, every_task_feeds(session, images[i:i + EVAL_BATCH]))
             for i in range(0, len(images), EVAL_BATCH)]
    return [np.concatenate([p[k] for p in parts]).astype(np.float32) for k in range(len(output_names))]


def graph_digest(model: bytes | Path) -> str:
    """What a graph computes, as a digest, however it is stored: its nodes and every weight's
    bytes (inline, or in the external data files of a graph on disk, wherever they sit there),
    without the model's metadata (which changes no output: the compiler attaches it after
    quantising)."""
    import onnx

    proto = onnx.load(model, load_external_data=False) if isinstance(model, Path) else onnx.ModelProto.FromString(model)
    del proto.metadata_props[:]
    digest = hashlib.sha256()
    files: dict[str, object] = {}
    try:
        for tensor in proto.graph.initializer:
            digest.update(tensor.name.encode() + b"\0")
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                where = {e.key: e.value for e in tensor.external_data}
                f = files.get(where["location"]) or files.setdefault(where["location"],
                                                                     open(model.parent / where["location"], "rb"))
                f.seek(int(where.get("offset", 0)))
                digest.update(f.read(int(where.get("length", -1))))
                del tensor.external_data[:]
                tensor.ClearField("data_location")
            else:
                digest.update(tensor.raw_data)
            tensor.ClearField("raw_data")
    finally:
        for f in files.values():
            f.close()
    digest.update(proto.SerializeToString(deterministic=True))
    return digest.hexdigest()


def check_outputs(check: CheckSet, model: bytes | Path, output_names: list[str], *,
                  emulate_qdq: bool = False) -> tuple[list[np.ndarray], bool]:
    """`run_batches` on all the check images, run once per graph and arithmetic: quantize (mixed.py)
    and verify precision judge the same fp32 graph, and the INT8 graph quantize settled on, on the
    same images. Returns the outputs and whether they were computed by an earlier call."""
    runs = check.outputs.setdefault((graph_digest(model), emulate_qdq), {})
    missing = [name for name in output_names if name not in runs]
    if missing:
        runs.update(zip(missing, run_batches(model, check.images, missing, emulate_qdq=emulate_qdq)))
    return [runs[name] for name in output_names], not missing


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def compare_output(name: str, ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None = None) -> OutputAgreement:
    """One output's row: `ref` from the fp32 graph, `got` from the reduced one, `labels` (-1: none)."""
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    err = np.abs(got64 - ref64)
    same = got.argmax(1) == ref.argmax(1)
    confident = softmax(ref64).max(1) >= CONFIDENT
    k = min(TOP_K, ref.shape[1])
    top_ref, top_got = np.argsort(-ref, 1)[:, :k], np.argsort(-got, 1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_got)])
    norms = np.linalg.norm(ref64, axis=1)
    rel = float(np.mean(np.linalg.norm(got64 - ref64, axis=1) / np.maximum(norms, 1e-12)))
    row = OutputAgreement(name, float(same.mean()), float(err.max()), float(err.mean()), float(np.abs(ref).max()),
                          confident_agreement=float(same[confident].mean()) if confident.any() else None,
                          confident_images=int(confident.sum()), top5_overlap=float(overlap),
                          relative_logit_error=rel, images=len(ref))
    if labels is not None:
        keep = labels >= 0
        if keep.any():
            row.labelled_images = int(keep.sum())
            row.accuracy_fp32 = float((ref.argmax(1)[keep] == labels[keep]).mean())
            row.accuracy = float((got.argmax(1)[keep] == labels[keep]).mean())
    return row


def agreement(refs: list[np.ndarray], gots: list[np.ndarray], output_names: list[str],
              labels: dict[str, np.ndarray] | None = None) -> list[OutputAgreement]:
    """Rows for outputs computed by the fp32 graph (`refs`) and the reduced one (`gots`)."""
    labels = labels or {}
    return [compare_output(name, ref, got, labels.get(name)) for name, ref, got in zip(output_names, refs, gots)]


def base_output_difference(reduced: bytes, base_only: bytes, images: np.ndarray, *, emulate_qdq: bool = False) -> float:
    """max |base output of the multi-task graph - base output of the base-only graph|."""
    (got,) = run_batches(reduced, images, ["base"], emulate_qdq=emulate_qdq)
    (ref,) = run_batches(base_only, images, ["base"], emulate_qdq=emulate_qdq)
    return float(np.abs(got - ref).max())


FIXES = ("keep more layers in fp32 (--max-fallback, or a larger --max-accuracy-drop lets fewer suffice), "
         "calibrate on more images or with another --calibration-method, or use --precision fp16")


def check_thresholds(rows: list[OutputAgreement], precision: str, *, min_agreement: float, max_accuracy_drop: float,
                     fp16_tolerance: float, context: str = "") -> None:
    for r in rows:
        where = f"{precision} output {r.output!r}{context}"
        if r.accuracy_drop is not None:  # rule 1
            if r.accuracy_drop > max_accuracy_drop:
                raise VerificationError(f"{where}: accuracy {r.accuracy:.1%} vs {r.accuracy_fp32:.1%} in fp32 on "
                                        f"{r.labelled_images or 'the'} labelled images, a drop of {r.accuracy_drop:.1%} "
                                        f"> --max-accuracy-drop {max_accuracy_drop:.1%}; {FIXES}")
        else:  # rule 2
            value, scope = r.judged_agreement
            if value < min_agreement:
                raise VerificationError(f"{where}: top-1 agreement with fp32 is {value:.1%}, below --min-agreement "
                                        f"{min_agreement:.1%} ({scope}); {FIXES}")
        if precision == "fp16" and r.relative_error > fp16_tolerance:  # rule 3
            raise VerificationError(f"{where} differs from fp32 by {r.relative_error:.2e} of its scale, tolerance "
                                    f"{fp16_tolerance:.0e}; this graph overflows or underflows in fp16")


def check_base_pinned(difference: float) -> None:  # rule 4
    if difference != 0.0:
        raise VerificationError(f"int8 base output moves by {difference:.3e} when tasks are added (expected 0): "
                                "this is a compiler bug, please report it with --debug output")
