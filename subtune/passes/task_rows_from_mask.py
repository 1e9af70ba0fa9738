"""Compute a task-select graph's row indices from one boolean mask input, `tasks`.

The lowering (subtune/compiler/lower.py, TaskSelectModel) exports one 1-d int64 input per task:
the indices of the images (rows of the batch) that asked for it. A caller should not have to
build those; it says per image which tasks it wants. This pass replaces the index inputs by
values computed inside the graph from one new input, `tasks`: bool [batch, k], column i for the
task whose index input is `index_inputs[i]` (output order).

Rules:
  1. The graph has every input named in `index_inputs`, each int64 of rank 1, the input `images`
     with a first (batch) dimension, and no input named `tasks` (`requires`: a graph that breaks
     one raises PreconditionError, naming what it found).
  2. A new graph input `tasks`, bool [batch, k], goes right after `images`; its first dimension is
     the very dimension of `images` (the same symbol, so NameBatchDimPass renames both).
  3. For column i: Gather(tasks, i, axis=1) -> NonZero -> Squeeze(axes [0]) gives the indices of
     the true entries, in increasing order (what torch.nonzero would give), as int64 [n_i]; every
     use of index input i reads that instead, and the index input goes. The nodes go at the top
     of the graph, named `task_rows/<task>/<Op>`, with stream role `rows:<task>` (given).
  4. An empty `index_inputs` changes nothing; `self.reason` says why.
`ensures`: no index input remains, `tasks` is an input of the promised type, and every former
use of an index input reads a Squeeze output of rule 3.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError, PreconditionError

from subtune.passes.record_stream_roles import ROLE_KEY

MASK_INPUT = "tasks"


class TaskRowsFromMaskPass(InPlacePass):
    def __init__(self, index_inputs: Sequence[str], task_names: Sequence[str], roles: Sequence[str],
                 mask_input: str = MASK_INPUT, images_input: str = "images"):
        """`index_inputs[i]`: the graph input holding task i's rows; `task_names[i]` names the nodes
        computing them, `roles[i]` is their stream role."""
        super().__init__()
        if not len(index_inputs) == len(task_names) == len(roles):
            raise ValueError("index_inputs, task_names and roles must have one entry per task")
        self.index_inputs, self.task_names, self.roles = list(index_inputs), list(task_names), list(roles)
        self.mask_input, self.images_input = mask_input, images_input
        self.reason: str | None = None
        self._replaced: list[ir.Value] = []

    def requires(self, model: ir.Model) -> None:  # rule 1
        if not self.index_inputs:
            return
        inputs = {v.name: v for v in model.graph.inputs}
        if self.mask_input in inputs:
            raise PreconditionError(f"the graph already has an input named {self.mask_input!r}")
        images = inputs.get(self.images_input)
        if images is None or images.shape is None or len(images.shape) == 0:
            raise PreconditionError(f"the graph has no input {self.images_input!r} with a batch dimension")
        for name in self.index_inputs:
            value = inputs.get(name)
            if value is None:
                raise PreconditionError(f"the graph has no index input {name!r} (inputs: {', '.join(inputs)})")
            if value.dtype != ir.DataType.INT64 or value.shape is None or len(value.shape) != 1:
                raise PreconditionError(f"index input {name!r} is {value.dtype} of shape {value.shape}, "
                                        "expected int64 of rank 1")

    def call(self, model: ir.Model) -> PassResult:
        self.reason = None
        self._replaced = []
        if not self.index_inputs:  # rule 4
            self.reason = "no index inputs: not a task-select graph"
            return PassResult(model, modified=False)
        graph = model.graph
        inputs = {v.name: v for v in graph.inputs}
        images = inputs[self.images_input]
        mask = ir.Value(name=self.mask_input, shape=ir.Shape([images.shape[0], len(self.index_inputs)]),
                        type=ir.TensorType(ir.DataType.BOOL))
        graph.inputs.insert(list(graph.inputs).index(images) + 1, mask)  # rule 2
        axes = _constant(graph, "task_rows/axes", np.array([0], dtype=np.int64))
        first = next(iter(graph), None)
        for column, (name, task, role) in enumerate(zip(self.index_inputs, self.task_names, self.roles)):  # rule 3
            index = _constant(graph, f"task_rows/{task}/column", np.array(column, dtype=np.int64))
            where = f"task_rows/{task}"
            gather = ir.node("Gather", [mask, index], attributes={"axis": 1}, name=f"{where}/Gather")
            nonzero = ir.node("NonZero", [gather.outputs[0]], name=f"{where}/NonZero")
            squeeze = ir.node("Squeeze", [nonzero.outputs[0], axes], name=f"{where}/Squeeze")
            old = inputs[name]
            gather.outputs[0].name, gather.outputs[0].shape = f"{where}/asked", ir.Shape([images.shape[0]])
            gather.outputs[0].type = ir.TensorType(ir.DataType.BOOL)
            nonzero.outputs[0].name = f"{where}/nonzero"
            nonzero.outputs[0].type = ir.TensorType(ir.DataType.INT64)
            squeeze.outputs[0].name = f"{where}/rows"
            squeeze.outputs[0].shape, squeeze.outputs[0].type = old.shape, ir.TensorType(ir.DataType.INT64)
            for node in (gather, nonzero, squeeze):
                node.metadata_props[ROLE_KEY] = role
                if first is None:
                    graph.append(node)
                else:
                    graph.insert_before(first, node)
            old.replace_all_uses_with(squeeze.outputs[0])
            graph.inputs.remove(old)
            self._replaced.append(squeeze.outputs[0])
        return PassResult(model, modified=True)

    def ensures(self, model: ir.Model) -> None:
        if not self.index_inputs:
            return
        inputs = {v.name: v for v in model.graph.inputs}
        left = [n for n in self.index_inputs if n in inputs]
        if left:
            raise PostconditionError(f"index inputs {left} are still graph inputs")
        mask = inputs.get(self.mask_input)
        if mask is None or mask.dtype != ir.DataType.BOOL or mask.shape is None or len(mask.shape) != 2 \
                or mask.shape[1] != len(self.index_inputs):
            raise PostconditionError(f"input {self.mask_input!r} is not bool [batch, {len(self.index_inputs)}]")
        for value in self._replaced:
            producer = value.producer()
            if producer is None or producer.op_type != "Squeeze":
                raise PostconditionError(f"{value.name} is not computed by rule 3's Squeeze")


def _constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.INT64),
                     const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value
