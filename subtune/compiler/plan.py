"""The plan: everything the compiler knows about one compile, filled in pass by pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from subtune.delta import TaskDelta
from subtune.models import BaseModel

if TYPE_CHECKING:
    import onnx_ir as ir
    from torch import nn

    from subtune.compiler.schedule import Schedule
    from subtune.models import Backbone
    from subtune.quantization.calibration import CalibrationSet


@dataclass
class Plan:
    base: BaseModel
    tasks: list[TaskDelta]
    input_size: tuple[int, int] | None = None  # (H, W); None: from tasks' preprocessing or the adapter
    export_batch: int = 2  # torch.export specialises sizes 0 and 1, so export at 2 and verify elsewhere
    scratch_dir: str | None = None  # where the graph's weights go while it is verified (None: the system's temp dir)
    # Filled in by passes:
    backbone: "Backbone | None" = None
    schedule: "Schedule | None" = None
    module: "nn.Module | None" = None  # verify moves it to the meta device: the graph holds the weights
    onnx: "ir.Model | None" = None
    report: dict[str, Any] = field(default_factory=dict)
    # --precision fp16/int8 (subtune/quantization):
    calibration: "CalibrationSet | None" = None  # the images quantisation is calibrated and checked on
    fp32_onnx: "ir.Model | None" = None  # the verified fp32 graph that `onnx` was reduced from
    base_only_onnx: "ir.Model | None" = None  # int8: the base stream alone, quantised with the same ranges

    @property
    def output_names(self) -> list[str]:
        return ["base"] + [t.name for t in self.tasks]
