"""Record each node's stream role in the node itself, where later steps read it.

A multi-task graph computes several streams (subtune/compiler/lower.py). Which stream a node
belongs to decides how it is quantised (subtune/quantization/base_stream.py: the base output's
tensors take the base's ranges), so the role is stored explicitly, as node metadata
`subtune.stream_role`, one of

    base            the base network's layers (the shared stream; its first rows are the base's)
    task:<name>     a task's tuned blocks, head or taps
    fork:<name>     the view that takes the base chunk of the shared stream for a task
    tap             the view that takes the base chunk for the tap tasks' heads
    merge           the Concat that joins task streams to the shared stream (batch axis)
    split           the nodes that split the final features into one chunk per stream

The roles come from the lowering: `MultiTaskModel.stream_roles()` maps the module path of each
stream part (`merges.merge_after_block3`, `tasks.0`, ...) to its role. Torch's exporter records
the module path of every node it emits (`pkg.torch.onnx.name_scopes`); this pass reads it once,
right after export, in the process that exported (the format is the exporter's own and may change
between torch versions, so nothing reads it later), and checks the result against what the
lowering expects: each merge module gives exactly one Concat on axis 0, the split at least one
node. A miss fails the compile here instead of mis-quantising later. A node under no stream part
is the base network's (the lowering's forward does no arithmetic of its own). After this pass
the roles travel with the nodes: renaming, cloning, serialisation (node `metadata_props`, ONNX IR
10) and ONNX Runtime's quantize_static (which keeps the original nodes) leave them alone.
StripExportMetadataPass keeps `subtune.` keys.
"""

from __future__ import annotations

import ast
import json
from collections import Counter

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

ROLE_KEY = "subtune.stream_role"
SCOPE_KEY = "pkg.torch.onnx.name_scopes"  # the dynamo exporter's module path of each node
BASE, MERGE, SPLIT, TAP = "base", "merge", "split", "tap"
TASK_PREFIX, FORK_PREFIX = "task:", "fork:"


def task_role(name: str) -> str:
    return f"{TASK_PREFIX}{name}"


def fork_role(name: str) -> str:
    return f"{FORK_PREFIX}{name}"


def stream_role(node: ir.Node) -> str | None:
    """The role recorded on `node`; None when it has none (a node added after compiling, such as
    a QuantizeLinear, or a graph compiled before roles were recorded)."""
    return node.metadata_props.get(ROLE_KEY)


def module_scopes(node: ir.Node) -> list[str]:
    """The exporter's module path of `node`, outermost first (empty when it recorded none)."""
    raw = node.metadata_props.get(SCOPE_KEY)
    if not raw:
        return []
    for parse in (json.loads, ast.literal_eval):  # torch writes a Python list's repr
        try:
            scopes = parse(raw)
        except (ValueError, SyntaxError):
            continue
        if isinstance(scopes, list):
            return [str(s) for s in scopes if s]
    return []


class RecordStreamRolesPass(InPlacePass):
    def __init__(self, roles: dict[str, str]):
        """`roles`: module path of each stream part that runs -> its role (MultiTaskModel.stream_roles())."""
        super().__init__()
        self.roles = dict(roles)

    def call(self, model: ir.Model) -> PassResult:
        nodes = list(model.graph)
        if not any(n.metadata_props.get(SCOPE_KEY) for n in nodes) and any(ROLE_KEY in n.metadata_props for n in nodes):
            # cleaned up before: the exporter's scopes are stripped and the roles recorded (a pass runs once
            # per export; a second clean-up of the same plan keeps what the first recorded)
            return PassResult(model, modified=False)
        modified = False
        parts: Counter[str] = Counter()
        merges: dict[str, list[ir.Node]] = {}
        for node in model.graph:
            part = self._part(node)
            role = self.roles[part] if part is not None else BASE
            if part is not None:
                parts[part] += 1
                if role == MERGE:
                    merges.setdefault(part, []).append(node)
            if node.metadata_props.get(ROLE_KEY) != role:
                node.metadata_props[ROLE_KEY] = role
                modified = True
        self._check(parts, merges)
        return PassResult(model, modified=modified)

    def _part(self, node: ir.Node) -> str | None:
        """The innermost stream part whose module path contains the node's."""
        for scope in reversed(module_scopes(node)):
            best = None
            for part in self.roles:
                if (scope == part or scope.startswith(part + ".")) and (best is None or len(part) > len(best)):
                    best = part
            if best is not None:
                return best
        return None

    def _check(self, parts: Counter[str], merges: dict[str, list[ir.Node]]) -> None:
        for part, role in sorted(self.roles.items()):
            if role == MERGE:
                found = merges.get(part, [])
                axis = [n.attributes.get("axis") for n in found]
                if len(found) != 1 or found[0].op_type != "Concat" or axis[0] is None or axis[0].as_int() != 0:
                    raise RuntimeError(f"internal error: merge {part!r} exported as {[n.op_type for n in found]}, "
                                       "expected one Concat on axis 0 (has the exporter's scope metadata changed?)")
            elif role == SPLIT and not parts[part]:
                raise RuntimeError(f"internal error: no exported node is attributed to the split {part!r} "
                                   "(has the exporter's scope metadata changed?)")
