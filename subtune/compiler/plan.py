"""The plan: everything the compiler knows about one compile, filled in pass by pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from subtune.formats import BaseModel, TaskDelta

if TYPE_CHECKING:
    import onnx_ir as ir
    from torch import nn

    from subtune.compiler.schedule import Schedule
    from subtune.models import Backbone


@dataclass
class Plan:
    base: BaseModel
    tasks: list[TaskDelta]
    input_size: tuple[int, int] | None = None  # (H, W); None: from tasks' preprocessing or the adapter
    export_batch: int = 2  # torch.export specialises sizes 0 and 1, so export at 2 and verify elsewhere
    # Filled in by passes:
    backbone: "Backbone | None" = None
    schedule: "Schedule | None" = None
    module: "nn.Module | None" = None
    onnx: "ir.Model | None" = None
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def output_names(self) -> list[str]:
        return ["base"] + [t.name for t in self.tasks]
