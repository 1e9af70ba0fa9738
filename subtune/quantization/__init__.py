"""Reduced-precision versions of a compiled multi-task graph: INT8 (QDQ) and FP16.

    base_stream.py   what the base output is computed from, cut out as a graph of its own
    calibration.py   calibration images (the trainer's --data forms) and tensor ranges on them
    int8.py          static post-training quantisation into QDQ form, the base's ranges pinned
    fp16.py          fp16 conversion, graph I/O and numerically sensitive ops kept in fp32
    compare.py       the reduced graph against its fp32 graph, and the thresholds that fail a compile

The central property: adding tasks never changes the base output of an INT8 graph (int8.py says
how, compare.py checks it on every compile). The compiler runs this package as three steps
(compiler/pipeline.py): load calibration data, quantize, verify precision. ONNX Runtime is
imported only when a step runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from subtune.errors import SubtuneError
from subtune.quantization.calibration import METHODS, CalibrationSet

INT8_TARGETS = ("tensorrt", "cpu")
RANDOM_CHECK_IMAGES = 32  # fp16 without --calibration is checked on this many random images


@dataclass
class PrecisionOptions:
    precision: str  # fp16 or int8 (fp32 needs no options)
    calibration: str | CalibrationSet | None = None  # a --data spec (`subtune train` forms), or images in code
    calibration_size: int = 256
    calibration_method: str = "minmax"
    int8_target: str = "tensorrt"  # tensorrt (TensorRT and ONNX Runtime) or cpu (ONNX Runtime x86 only): int8.py
    # Defaults from EfficientNet-Lite0 -> Fashion-MNIST tasks (bench/quantized_latency.py): a sound INT8 graph agreed
    # with fp32 on 91-94% of a task's images and ~67% of the base's (ImageNet logits on other images: close calls),
    # a broken one (saturating kernels) on 15-61%; accuracy dropped 0-2 points, which 256 images measure to about
    # +-1.5 points.
    min_agreement: float = 0.5  # top-1 agreement with the fp32 graph, every output: catches a broken graph
    max_accuracy_drop: float = 0.03  # accuracy (fraction) lost vs fp32, outputs whose classes the data has
    fp16_tolerance: float = 1e-2  # max error relative to the output's scale
    seed: int = 0

    def check(self) -> "PrecisionOptions":
        if self.precision not in ("fp16", "int8"):
            raise SubtuneError(f"precision {self.precision!r}: expected fp16 or int8 (fp32 is the default graph)")
        if self.precision == "int8" and self.calibration is None:
            raise SubtuneError("--precision int8 needs --calibration DATA: representative images to measure ranges on "
                               "(e.g. fashion-mnist or imagefolder:DIR, the forms `subtune train --data` takes)")
        if self.calibration_method not in METHODS:
            raise SubtuneError(f"--calibration-method {self.calibration_method!r}: expected one of "
                               f"{', '.join(METHODS)}")
        if self.int8_target not in INT8_TARGETS:
            raise SubtuneError(f"--int8-target {self.int8_target!r}: expected one of {', '.join(INT8_TARGETS)}")
        if self.calibration_size < 1:
            raise SubtuneError(f"--calibration-size {self.calibration_size}: expected a positive number of images")
        if not 0 <= self.min_agreement <= 1 or not 0 <= self.max_accuracy_drop <= 1:
            raise SubtuneError("--min-agreement and --max-accuracy-drop are fractions between 0 and 1 "
                               "(e.g. 0.95, 0.01)")
        return self

    @property
    def tensorrt_compatible(self) -> bool:
        return self.precision == "fp16" or self.int8_target == "tensorrt"

    def calibration_set(self, arch: str, model, tasks, input_size: tuple[int, int]) -> CalibrationSet:
        """The images to calibrate and check on, preprocessed as the tasks were trained."""
        if isinstance(self.calibration, CalibrationSet):
            if tuple(self.calibration.images.shape[2:]) != tuple(input_size):
                raise SubtuneError(f"calibration images are {self.calibration.images.shape[2:]}, the graph takes "
                                   f"{tuple(input_size)}")
            return self.calibration
        if self.calibration is None:  # fp16 only (check() refuses int8 without data)
            g = np.random.default_rng(self.seed)
            images = g.standard_normal((RANDOM_CHECK_IMAGES, 3, *input_size), dtype=np.float32)
            return CalibrationSet(images, source=f"{RANDOM_CHECK_IMAGES} random normal images (no --calibration)")
        from subtune.quantization.calibration import load_calibration_set, normalization

        mean, std = normalization(arch, model, tasks)
        return load_calibration_set(self.calibration, size=self.calibration_size, image_size=input_size,
                                    mean=mean, std=std, seed=self.seed)


@dataclass
class ReducedGraph:
    model: ir.Model
    base_only: ir.Model | None  # int8: the base stream quantised with the same ranges, for the pinning check
    report: dict


def reduce_precision(model: ir.Model, options: PrecisionOptions, calibration: CalibrationSet) -> ReducedGraph:
    from subtune.passes import AttachMetadataPass

    if options.precision == "int8":
        from subtune.quantization.int8 import quantize_int8

        q = quantize_int8(model, calibration, options.calibration_method, options.int8_target)
        reduced = ReducedGraph(q.model, q.base_only, {"precision": "int8", **q.report})
    else:
        from subtune.quantization.fp16 import convert_fp16

        fp16, report = convert_fp16(model)
        reduced = ReducedGraph(fp16, None, {"precision": "fp16", **report})
    # quantize_static and the fp16 converter rebuild the model; the compiler's metadata comes along
    meta = {k: v for k, v in model.metadata_props.items()}
    meta["subtune.precision"] = options.precision
    if options.precision == "int8":
        meta["subtune.calibration"] = {"source": calibration.source, "method": options.calibration_method,
                                       "target": options.int8_target}
    AttachMetadataPass(meta)(reduced.model)
    return reduced


def verify_reduced(fp32: bytes, reduced: bytes, base_only: bytes | None, calibration: CalibrationSet,
                   output_names: list[str], tasks, options: PrecisionOptions) -> dict:
    """Compare with fp32 on the calibration images; raise VerificationError past a threshold."""
    from subtune.quantization.compare import (agreement, check_base_pinned, check_thresholds, labelled_outputs,
                                              run_batches)

    emulate = options.precision == "int8" and options.int8_target == "tensorrt"  # compare.py says why
    images = calibration.images
    gots = run_batches(reduced, images, output_names, emulate_qdq=emulate)
    rows = agreement(run_batches(fp32, images, output_names), gots, output_names, calibration,
                     labelled_outputs(tasks, calibration))
    report = {"images": calibration.source,
              "runtime": "ONNX Runtime CPU" + (", QDQ run as written (TensorRT's arithmetic)" if emulate else ""),
              "min_agreement": options.min_agreement, "max_accuracy_drop": options.max_accuracy_drop,
              "outputs": [r.to_json() for r in rows]}
    if options.precision == "fp16":
        report["fp16_tolerance"] = options.fp16_tolerance
    if base_only is not None:
        (alone,) = run_batches(base_only, images, ["base"], emulate_qdq=emulate)
        diff = float(np.abs(gots[output_names.index("base")] - alone).max())
        report["base_output_vs_base_only"] = {"max_abs_difference": diff}
        check_base_pinned(diff)
    check_thresholds(rows, options.precision, min_agreement=options.min_agreement,
                     max_accuracy_drop=options.max_accuracy_drop, fp16_tolerance=options.fp16_tolerance)
    return report
