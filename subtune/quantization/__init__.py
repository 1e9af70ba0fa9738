"""Reduced-precision versions of a compiled multi-task graph: INT8 (QDQ) and FP16.

    base_stream.py   what the base output is computed from, cut out as a graph of its own
    calibration.py   calibration images (the trainer's --data forms) and tensor ranges on them
    heldout.py       the check images: the data's test split, labels per output (a task's label map)
    int8.py          static post-training quantisation into QDQ form, the base's ranges pinned
    fallback.py      the units of a QDQ graph, and the surgery that computes some of them in fp32
    sensitivity.py   each unit's error quantised alone: one graph for all units, or a session each
    mixed.py         plain INT8 judged first; when it fails, the most sensitive layers kept in fp32
                     until every output meets its target on the check images
    fp16.py          fp16 conversion, graph I/O and numerically sensitive ops kept in fp32
    compare.py       the reduced graph against its fp32 graph, and the thresholds that fail a compile
    files.py         graphs as ONNX Runtime loads them: bytes, or a file with external data over 2 GiB
    timing.py        a quick latency check against fp32 for the report
    plot.py          the sensitivity table and PNG, the compile summary

The central property: adding tasks never changes the base output of an INT8 graph, mixed or not
(int8.py and mixed.py say how, compare.py checks it on every compile). The compiler runs this
package as three steps (compiler/pipeline.py): load calibration (and check) data, quantize (with
sensitivity and fallback where plain INT8 misses a target), verify precision (which reuses the
runs quantize made on the check images: compare.check_outputs). ONNX Runtime is imported only
when a step runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx_ir as ir

from subtune.errors import SubtuneError
from subtune.quantization.calibration import METHODS, CalibrationSet
from subtune.quantization.heldout import CheckSet

log = logging.getLogger(__name__)

INT8_TARGETS = ("auto", "tensorrt", "cpu")
RANDOM_CHECK_IMAGES = 32  # fp16 without --calibration is checked on this many random images
X86 = ("x86_64", "amd64", "i386", "i686")


def resolve_int8_target(target: str, *, engine: bool = False, machine: str | None = None) -> tuple[str, str]:
    """`auto` -> the QDQ form the runtime in use executes fast, and why (for the report)."""
    import platform

    if target != "auto":
        return target, "chosen with --int8-target"
    if engine:
        return "tensorrt", "auto: the output is a TensorRT engine, which takes symmetric int8 only"
    machine = (machine or platform.machine()).lower()
    if machine in X86:
        return "cpu", (f"auto: ONNX Runtime on x86 ({machine}) fuses the uint8 form into int8 kernels; "
                       "TensorRT's form runs partly unfused there (pass --int8-target tensorrt for a TensorRT graph)")
    return "tensorrt", f"auto: {machine} is not x86, where the cpu form's 7-bit weights are tuned for; symmetric int8"


@dataclass
class PrecisionOptions:
    precision: str  # fp16 or int8 (fp32 needs no options)
    calibration: str | CalibrationSet | None = None  # a --data spec (`subtune train` forms), or images in code
    calibration_size: int = 256
    calibration_method: str = "minmax"
    int8_target: str = "auto"  # auto, tensorrt (TensorRT and ONNX Runtime) or cpu (ONNX Runtime x86 only): int8.py
    # Thresholds, judged on held-out images (heldout.py, compare.py). Measured on the main job's graph
    # (EfficientNet-Lite0 + fashion10 + coarse4 at 64 px, Fashion-MNIST test split; bench/int8_accuracy.py, see
    # docs/precision.md): fp16 keeps the tasks' accuracy within 0.2 points and the base's confident top-1
    # at 99-100 %; plain INT8 loses up to several points and agrees on 40-80 % of the base's confident images; a
    # graph with saturated kernels drops tasks by tens of points. 1 point is the target and about twice the
    # paired noise of 1000 test images.
    min_agreement: float = 0.95  # top-1 agreement with fp32 where fp32 is confident, outputs without labels (the base)
    max_accuracy_drop: float = 0.01  # accuracy (fraction) lost vs fp32, outputs with held-out labels
    fp16_tolerance: float = 1e-2  # max error relative to the output's scale
    seed: int = 0
    check_data: str | CheckSet | None = None  # held-out images; None: the calibration data's test split
    check_size: int = 1000
    fallback: bool = True  # int8: keep the most sensitive layers in fp32 until every output meets its target
    max_fallback: int | None = None  # at most this many layers in fp32; None: half of the quantised layers
    sensitivity_images: int = 64  # check images each layer's sensitivity is measured on
    # int8: measure every layer's sensitivity even when plain int8 meets every target (the table and its PNG; a few
    # minutes for ResNet-50). Without it, sensitivity is measured only when a fallback is searched (mixed.py).
    sensitivity: bool = False
    engine: bool = False  # the graph is for a TensorRT engine (resolves --int8-target auto)
    int8_target_reason: str = ""
    measure_latency: bool = True  # time fp32 vs the reduced graph on ONNX Runtime CPU (a quick check, not a bench)
    # A reduced graph that the quick check finds slower than fp32 at every batch size is refused (it would be
    # less accurate and slower); allow_slower keeps it (e.g. built here for another host, or a TensorRT engine).
    allow_slower: bool = False
    sensitivity_plot: str | None = None  # PNG of the sensitivity table, written after a successful check

    def check(self, *, engine: bool = False) -> "PrecisionOptions":
        """Refuse options that cannot work, before any work is done, and return them resolved as a
        new object (`int8_target` auto becomes the form for the runtime in use, with the reason);
        the object it is called on is left as it was. `engine`: the graph is for a TensorRT engine.
        Messages name the parameters (`int8_target`); the command line shows them as its flags."""
        if self.precision not in ("fp16", "int8"):
            raise SubtuneError(f"`precision` {self.precision!r}: expected fp16 or int8 (fp32 is the default graph)")
        if self.precision == "int8" and self.calibration is None:
            raise SubtuneError("`precision` int8 needs `calibration` DATA: representative images to measure ranges on "
                               "(e.g. fashion-mnist or imagefolder:DIR, the data specs training takes)")
        if self.calibration_method not in METHODS:
            raise SubtuneError(f"`calibration_method` {self.calibration_method!r}: expected one of {', '.join(METHODS)}")
        if self.int8_target not in INT8_TARGETS:
            raise SubtuneError(f"`int8_target` {self.int8_target!r}: expected one of {', '.join(INT8_TARGETS)}")
        if self.calibration_size < 1:
            raise SubtuneError(f"`calibration_size` {self.calibration_size}: expected a positive number of images")
        if self.check_size < 1:
            raise SubtuneError(f"`check_size` {self.check_size}: expected a positive number of images")
        if self.max_fallback is not None and self.max_fallback < 0:
            raise SubtuneError(f"`max_fallback` {self.max_fallback}: expected a number of layers, 0 or more")
        if not 0 <= self.min_agreement <= 1 or not 0 <= self.max_accuracy_drop <= 1:
            raise SubtuneError("`min_agreement` and `max_accuracy_drop` are fractions between 0 and 1 (e.g. 0.95, 0.01)")
        engine = self.engine or engine
        if self.precision == "int8" and engine and self.int8_target == "cpu":
            raise SubtuneError("`int8_target` cpu is ONNX Runtime's x86 form (uint8 activations), which TensorRT "
                               "refuses: a TensorRT engine takes `int8_target` tensorrt (or auto)")
        target, reason = self.int8_target, self.int8_target_reason
        if self.precision == "int8":
            target, why = resolve_int8_target(self.int8_target, engine=engine)
            reason = reason or why
        return replace(self, engine=engine, int8_target=target, int8_target_reason=reason)

    @property
    def tensorrt_compatible(self) -> bool:
        return self.precision == "fp16" or self.int8_target == "tensorrt"

    @property
    def limits(self) -> dict:
        return {"min_agreement": self.min_agreement, "max_accuracy_drop": self.max_accuracy_drop,
                "fp16_tolerance": self.fp16_tolerance}

    def calibration_set(self, arch: str, model, tasks, input_size: tuple[int, int]) -> CalibrationSet:
        """The images to calibrate on, preprocessed as the tasks were trained, with the held-out
        images to check on (`.check`)."""
        if isinstance(self.calibration, CalibrationSet):
            if tuple(self.calibration.images.shape[2:]) != tuple(input_size):
                raise SubtuneError(f"calibration images are {self.calibration.images.shape[2:]}, the graph takes "
                                   f"{tuple(input_size)}")
            data = self.calibration
        elif self.calibration is None:  # fp16 only (check() refuses int8 without data)
            g = np.random.default_rng(self.seed)
            images = g.standard_normal((RANDOM_CHECK_IMAGES, 3, *input_size), dtype=np.float32)
            data = CalibrationSet(images, source=f"{RANDOM_CHECK_IMAGES} random normal images (no --calibration)")
        else:
            from subtune.quantization.calibration import load_calibration_set, normalization

            mean, std = normalization(arch, model, tasks)
            data = load_calibration_set(self.calibration, size=self.calibration_size, image_size=input_size,
                                        mean=mean, std=std, seed=self.seed)
        if data.check is None:
            data.check = self._check_set(arch, model, tasks, input_size, data)
        return data

    def _check_set(self, arch, model, tasks, input_size, data: CalibrationSet) -> CheckSet:
        from subtune.quantization.heldout import load_check_set

        spec = self.check_data if self.check_data is not None else self.calibration
        if isinstance(spec, CheckSet):
            return spec
        if isinstance(spec, str):
            from subtune.quantization.calibration import normalization

            mean, std = normalization(arch, model, tasks)
            return load_check_set(spec, size=self.check_size, image_size=input_size, mean=mean, std=std,
                                  tasks=tasks, calibration=data, seed=self.seed)
        return calibration_as_check(data, tasks)


def calibration_as_check(data: CalibrationSet, tasks) -> CheckSet:
    """The calibration images themselves (images given in code): not held out, said so."""
    from subtune.quantization.heldout import task_labels

    labels = task_labels(tasks, data.labels, data.classes, None) if data.labels is not None and data.classes else {}
    return CheckSet(data.images, labels, f"{data.source} (the calibration images: not held out)", held_out=False)


@dataclass
class ReducedGraph:
    model: ir.Model
    base_only: ir.Model | None  # int8: the base stream quantised with the same ranges, for the pinning check
    report: dict


def reduce_precision(model: ir.Model, options: PrecisionOptions, calibration: CalibrationSet,
                     tasks=()) -> ReducedGraph:
    from subtune import graph_metadata
    from subtune.passes import AttachMetadataPass

    if options.precision == "int8":
        from subtune.quantization.int8 import quantize_int8

        q = quantize_int8(model, calibration, options.calibration_method, options.int8_target)
        report = {"precision": "int8", **q.report}
        report["scheme"]["target_reason"] = options.int8_target_reason
        if options.fallback or options.sensitivity:
            from subtune.quantization.mixed import mixed_int8

            check = calibration.check or calibration_as_check(calibration, tasks)
            q.model, q.base_only, report["mixed"] = mixed_int8(model, q.model, q.base_only, check, options)
        reduced = ReducedGraph(q.model, q.base_only, report)
    else:
        from subtune.quantization.fp16 import convert_fp16

        fp16, report = convert_fp16(model)
        reduced = ReducedGraph(fp16, None, {"precision": "fp16", **report})
    # quantize_static and the fp16 converter rebuild the model; the compiler's metadata comes along
    meta: dict[str, object] = {"subtune.precision": options.precision}
    if options.precision == "int8":
        meta["subtune.calibration"] = {"source": calibration.source, "method": options.calibration_method,
                                       "target": options.int8_target,
                                       "fp32_layers": reduced.report.get("mixed", {}).get("fallback", {}).get(
                                           "labels", [])}
    AttachMetadataPass({**model.metadata_props, **graph_metadata.encode(meta)})(reduced.model)
    return reduced


def verify_reduced(fp32: bytes | Path, reduced: bytes | Path, base_only: bytes | Path | None,
                   calibration: CalibrationSet, output_names: list[str], tasks, options: PrecisionOptions) -> dict:
    """Compare with fp32 on the held-out check images; raise VerificationError past a threshold.
    Graphs are serialized, or files (with external data beside them, for a graph over 2 GiB)."""
    from subtune.quantization.compare import agreement, check_base_pinned, check_outputs, check_thresholds, run_batches

    emulate = options.precision == "int8" and options.int8_target == "tensorrt"  # compare.py says why
    check = calibration.check or calibration_as_check(calibration, tasks)
    images = check.images
    names = list(output_names) if "base" in output_names or base_only is None else [*output_names, "base"]
    # outputs of graphs quantize already ran on these images (the fp32 graph, the INT8 graph it settled on) are
    # reused: check_outputs keys them by what the graph computes
    clock = time.perf_counter
    start = clock()
    refs, fp32_reused = check_outputs(check, fp32, output_names)
    gots, reduced_reused = check_outputs(check, reduced, names, emulate_qdq=emulate)
    rows = agreement(refs, gots, output_names, check.labels)
    seconds = {"outputs": round(clock() - start, 3)}
    report = {"images": check.source, "held_out": check.held_out, "check_images": len(images),
              "runtime": "ONNX Runtime CPU" + (", QDQ run as written (TensorRT's arithmetic)" if emulate else ""),
              "min_agreement": options.min_agreement, "max_accuracy_drop": options.max_accuracy_drop,
              "outputs": [r.to_json() for r in rows],
              "outputs_computed_by_quantize": [k for k, reused in (("fp32", fp32_reused),
                                                                  (options.precision, reduced_reused)) if reused]}
    if options.precision == "fp16":
        report["fp16_tolerance"] = options.fp16_tolerance
    if base_only is not None:
        with_tasks = gots[names.index("base")]
        (alone,) = run_batches(base_only, images, ["base"], emulate_qdq=emulate)
        diff = float(np.abs(with_tasks - alone).max())
        if check.images is not calibration.images:
            (with_tasks,) = run_batches(reduced, calibration.images, ["base"], emulate_qdq=emulate)
            (alone,) = run_batches(base_only, calibration.images, ["base"], emulate_qdq=emulate)
            diff = max(diff, float(np.abs(with_tasks - alone).max()))
        report["base_output_vs_base_only"] = {"max_abs_difference": diff}
        seconds["base_pinned"] = round(clock() - start - seconds["outputs"], 3)
        check_base_pinned(diff)
    if options.measure_latency:
        from subtune.quantization.timing import latency_ratios

        start = clock()
        report["latency"] = lat = latency_ratios(fp32, reduced, images, emulate_qdq=emulate)
        ratios = [v["ratio"] for k, v in lat.items() if k.startswith("batch_")]
        lat["faster_than_fp32"] = all(r < 1 for r in ratios)
        seconds["latency"] = round(clock() - start, 3)
    report["seconds"] = seconds
    check_thresholds(rows, options.precision, **options.limits)
    if options.measure_latency:
        check_faster(report["latency"], options)
    return report


def check_faster(lat: dict, options: PrecisionOptions) -> None:
    """Refuse an INT8 graph in the form for ONNX Runtime's x86 kernels (`--int8-target cpu`, what `auto`
    picks for `-o model.onnx` on x86) that the quick check found slower than fp32 at every batch size it
    timed here: it would cost accuracy and time. Other forms (fp16, the TensorRT QDQ form) are built for
    runtimes this host's ONNX Runtime CPU does not stand for, so a slow quick check only warns."""
    from subtune.errors import VerificationError

    batches = sorted((int(k.split("_")[1]), v["ratio"]) for k, v in lat.items() if k.startswith("batch_"))
    if any(r < 1 for _, r in batches):
        return
    load = (lat.get("load_average") or [0.0])[0]
    measured = (f"the {options.precision} graph ran " + " / ".join(f"{r:.2f}x" for _, r in batches)
                + " the fp32 graph's time at batch " + " / ".join(str(b) for b, _ in batches)
                + f" on ONNX Runtime CPU here (quick check, {_flags(lat)}, load average {load:.1f})")
    judged = options.precision == "int8" and options.int8_target == "cpu" and not options.engine
    if options.allow_slower or not judged:
        log.warning("%s; kept (%s): reduced precision pays where the runtime has fast kernels for it (int8: VNNI/AMX "
                    "x86 or TensorRT; fp16: GPUs), measure with bench/int8_accuracy.py before deploying", measured,
                    "--allow-slower" if options.allow_slower else "not a graph for ONNX Runtime CPU")
        return
    raise VerificationError(f"{measured}: reduced precision does not pay on this host; compile in fp32 (drop "
                            "--precision), time it where it will run (bench/int8_accuracy.py), or pass --allow-slower "
                            "to keep it")


def _flags(lat: dict) -> str:
    fast = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in (lat.get("cpu_flags") or [])]
    return "CPU with " + ", ".join(fast) if fast else "CPU without VNNI/AMX"
