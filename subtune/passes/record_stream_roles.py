"""Record each node's stream role in the node itself, where later steps read it.

A multi-task graph computes several streams (subtune/compiler/lower.py). Which stream a node
belongs to decides how it is quantised (subtune/quantization/base_stream.py: the base output's
tensors take the base's ranges), so the role is stored explicitly, as node metadata
`subtune.stream_role`, one of

    base            the base network's layers (the shared stream; its first rows are the base's),
                    its stem and neck, and the batch size read from `images`
    task:<name>     a task's tuned blocks, head or taps
    fork:<name>     what takes task <name>'s rows of the base chunk of the shared stream: a view
                    of the whole chunk; with --task-select, a Gather of the rows that asked for
                    the task (before its blocks, of its tapped activations, of the base features
                    a Siamese head reads)
    tap             the view that takes the base chunk for the tap tasks' heads
    merge           the Concat that joins task streams to the shared stream (batch axis)
    split           the nodes that split the final features into one chunk per stream
  with --task-select only (lower.py's TaskSelectModel; passes/task_rows_from_mask.py):
    rows:<name>     the indices of the images that asked for task <name>: its column of the
                    graph input `tasks`, NonZero, Squeeze, and the row count read from them
    fill:<name>     task <name>'s full-batch output: the fill value (NaN), its logits scattered
                    into the rows that asked for it

The roles come from evidence, never from a default:
  1. The lowering's account of its parts: `MultiTaskModel.stream_roles()` maps the module path
     of each part (`merges.merge_after_block3`, `tasks.0`, `stem`, ...) to its role. Torch's
     exporter records the module path of every node it emits (`pkg.torch.onnx.name_scopes`);
     a node takes the role of the innermost part its path lies under.
  2. Sizes: for a symbolic size (torch.export's `sym_size`), the exporter emits a Shape of a
     graph input (and a Squeeze to a scalar) marked as having no module (SIZE_SCOPE). Such a
     node takes the role the lowering gives the graph input it reads (`input_roles`: `images`
     is the base's, a task's row indices are `rows:<name>`). A marked node that adds sizes of
     several inputs (the row count of a merged stream, batch + n_0 + ..., which the exporter
     hoists when several parts use it) is the merges': `merge`.
  3. Anything else (a node under no part: arithmetic in the lowering's own forward, or a node
     the exporter emitted without a scope) fails the compile here, naming the node.
This pass reads the scopes once, right after export, in the process that exported (the format
is the exporter's own and may change between torch versions, so nothing reads it later), and
checks the result against what the lowering expects: each merge module gives exactly one Concat
on axis 0, the split at least one node. A miss fails the compile here instead of mis-quantising
later. After this pass the roles travel with the nodes: renaming, cloning, serialisation (node
`metadata_props`, ONNX IR 10) and ONNX Runtime's quantize_static (which keeps the original
nodes) leave them alone. StripExportMetadataPass keeps `subtune.` keys.
"""

from __future__ import annotations

import ast
import json
from collections import Counter

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

ROLE_KEY = "subtune.stream_role"
SCOPE_KEY = "pkg.torch.onnx.name_scopes"  # the dynamo exporter's module path of each node
SIZE_SCOPE = "_empty_nn_module_stack_from_metadata_hook"  # the exporter's scope of a symbolic size's Shape
BASE, MERGE, SPLIT, TAP = "base", "merge", "split", "tap"
TASK_PREFIX, FORK_PREFIX, ROWS_PREFIX, FILL_PREFIX = "task:", "fork:", "rows:", "fill:"


def task_role(name: str) -> str:
    return f"{TASK_PREFIX}{name}"


def fork_role(name: str) -> str:
    return f"{FORK_PREFIX}{name}"


def rows_role(name: str) -> str:
    return f"{ROWS_PREFIX}{name}"


def fill_role(name: str) -> str:
    return f"{FILL_PREFIX}{name}"


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
    def __init__(self, roles: dict[str, str], input_roles: dict[str, str] | None = None):
        """`roles`: module path of each stream part that runs -> its role (MultiTaskModel.stream_roles());
        `input_roles`: graph input -> the role of the sizes read from it (rule 2; MultiTaskModel.input_roles())."""
        super().__init__()
        self.roles = dict(roles)
        self.input_roles = dict(input_roles or {})

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
            part = self._part(node)  # rule 1
            if part is not None:
                role = self.roles[part]
                parts[part] += 1
                if role == MERGE:
                    merges.setdefault(part, []).append(node)
            else:
                role = self._size_role(node)  # rule 2
            if role is None:  # rule 3
                scopes = module_scopes(node)
                raise RuntimeError(
                    f"internal error: node {node.name or '?'} ({node.op_type}) has no stream role: "
                    + (f"its exporter scope {'/'.join(scopes)} lies under none of the lowering's parts "
                       f"({', '.join(sorted(self.roles))})" if scopes else "the exporter recorded no scope for it")
                    + "; the lowering must run every computation inside a part (compiler/lower.py)")
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

    def _size_role(self, node: ir.Node) -> str | None:
        """Rule 2: a node the exporter emitted for a symbolic size (Shape of a graph input, and the
        Squeeze/Gather that make it a scalar) takes the role of the graph input it reads."""
        if SIZE_SCOPE not in module_scopes(node):
            return None
        roles, stack, seen = set(), [node], set()
        while stack:
            current = stack.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            for value in current.inputs:
                if value is None or value.const_value is not None or value.is_initializer():
                    continue
                if value.is_graph_input():
                    roles.add(self.input_roles.get(value.name))
                    continue
                producer = value.producer()
                if producer is None or SIZE_SCOPE not in module_scopes(producer):
                    return None  # reads something that is not a size: no evidence
                stack.append(producer)
        if None in roles or not roles:
            return None
        return roles.pop() if len(roles) == 1 else MERGE

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
