"""Give the fork, merge and split nodes of a multi-task graph names a person can find.

Rules, by the exporter's module scope recorded on each node (`pkg.torch.onnx.name_scopes`):
  1. A node inside `merges.merge_after_blockK`, `final_merge` or `split_heads` is named
     `<that module>/<OpType>` (numbered when there are several of one type).
  2. A node inside `forks.fork_<task>_before_blockK` is named the same way; with --task-select,
     one inside `selects.<key>` is named `select_<key>/<OpType>` and one inside `fills.<task>`
     `fill_<task>/<OpType>`.
  3. Fork nodes whose scope the exporter lost (PyTorch's decomposition sometimes re-attributes
     them to the next module): the Reshape -> Gather(axis 0) pair feeding a task's first block,
     found inside `tasks.<i>.blocks.0`, is named after that task's fork.
Names elsewhere are left alone. The pass needs the scope metadata, so it runs before
StripExportMetadataPass.

The names are for people (reports, graph viewers) only: nothing depends on them for
correctness. Which stream a node belongs to is recorded explicitly by RecordStreamRolesPass
(record_stream_roles.py), and that is what quantisation reads.
"""

from __future__ import annotations

import re
from collections import Counter

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

from subtune.passes.record_stream_roles import SCOPE_KEY, module_scopes  # noqa: F401 (SCOPE_KEY)

STREAM_SCOPE = re.compile(r"^(merges\.(merge_after_block\d+)|final_merge|split_heads|forks\.(fork_.+_before_block\d+)"
                          r"|(select|fill)s\.(.+))$")
TASK_FIRST_BLOCK = re.compile(r"^tasks\.(\d+)\.blocks\.0(\.|$)")


class NameStreamNodesPass(InPlacePass):
    def __init__(self, fork_names: dict[int, str]):
        """`fork_names[i]`: the fork module name of task i (e.g. 'fork_dogs_before_block13')."""
        super().__init__()
        self.fork_names = fork_names

    def call(self, model: ir.Model) -> PassResult:
        counts: Counter[str] = Counter()
        renamed = []
        for node in model.graph:
            name = self._stream_name(node)
            if name is not None:
                renamed.append((node, name))
                counts[name] += 1
        seen: Counter[str] = Counter()
        for node, name in renamed:
            seen[name] += 1
            node.name = name if counts[name] == 1 else f"{name}_{seen[name] - 1}"
        return PassResult(model, modified=bool(renamed))

    def _stream_name(self, node: ir.Node) -> str | None:
        for scope in module_scopes(node):
            m = STREAM_SCOPE.match(scope)
            if m:  # rules 1 and 2
                part = f"{m.group(4)}_{m.group(5)}" if m.group(4) else m.group(2) or m.group(3) or m.group(1)
                return f"{part}/{node.op_type}"
        for scope in module_scopes(node):  # rule 3
            m = TASK_FIRST_BLOCK.match(scope)
            if m and node.op_type in ("Reshape", "Gather") and self._is_fork_op(node, scope):
                fork = self.fork_names.get(int(m.group(1)))
                if fork:
                    return f"{fork}/{node.op_type}"
        return None

    @staticmethod
    def _is_fork_op(node: ir.Node, scope: str) -> bool:
        if node.op_type == "Gather":
            axis = node.attributes.get("axis")
            producer = node.inputs[0].producer() if node.inputs[0] is not None else None
            return (axis is None or axis.as_int() == 0) and producer is not None and producer.op_type == "Reshape"
        # Reshape: its data comes from outside the task (the shared stream), it feeds a Gather.
        producer = node.inputs[0].producer() if node.inputs[0] is not None else None
        outside = producer is None or scope not in module_scopes(producer)
        return outside and any(c.op_type == "Gather" for c in node.outputs[0].consumers())
