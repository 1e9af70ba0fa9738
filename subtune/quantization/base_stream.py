"""The base stream of a multi-task graph: everything the `base` output is computed from.

The compiler's graph runs the shared layers once, on a batch that grows at every merge (the
base's rows first, then the rows of the tasks that rejoined). For the base output to stay put
when tasks are added, each tensor the base output depends on must be quantised with the
parameters the base alone would get. This module finds those tensors and cuts them out as a
graph of their own, which is then calibrated on its own.

`extract_base_stream` is a transform: it returns a new model and leaves its input alone. Rules,
over the stream roles the compiler records in each node (`subtune.stream_role`, written by
subtune/passes/record_stream_roles.py from the lowering's own account of its streams; node names
are cosmetic and play no part):
  1. The only output is `base`.
  2. A merge (role `merge`: a Concat on the batch axis) on the base path is bypassed: its
     consumers read its input 0, the shared stream whose rows come first in the merge.
  3. The split (role `split`) hands the base classifier chunk 0; with one stream left, chunk
     0 is the split's input itself, flattened to the features' rank 2. The flattened value keeps
     the chunk's name. (A --task-select split also reads row counts, int64 sizes: the stream it
     splits is its one floating-point input.)
  4. Everything else the base output does not depend on (forks, task blocks, task heads) goes,
     and so do graph inputs it does not read (a --task-select graph's `tasks` mask).
A graph with no recorded roles (compiled by a subtune from before they were recorded) is refused
with a SubtuneError that says to recompile it.
Values keep their names, so a range measured on the base stream applies to the same-named value
of the multi-task graph. Values the base stream no longer has (merge outputs and the split's
intermediates on the base path) are listed in `aliases`, mapped to the base-stream value whose
rows they begin with.

`base_path` is the matching analysis on the multi-task graph: the names of the values the base
output depends on, not following a merge's task inputs (inputs 1..n).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from subtune.errors import SubtuneError
from subtune.passes.record_stream_roles import BASE, MERGE, ROLE_KEY, SPLIT, stream_role

TASK_PARAMETER_PREFIX = "tasks."  # lower.MultiTaskModel keeps task weights under `tasks`
SIZE_TYPES = (ir.DataType.INT64, ir.DataType.INT32)  # row counts and offsets, not streams


@dataclass
class BaseStream:
    model: ir.Model
    aliases: dict[str, str] = field(default_factory=dict)  # multi-task value -> base-stream value


def is_merge(node: ir.Node) -> bool:
    return node.op_type == "Concat" and stream_role(node) == MERGE


def is_split(node: ir.Node) -> bool:
    return stream_role(node) == SPLIT


def check_stream_roles(model: ir.Model) -> None:
    """Refuse a graph whose nodes carry no stream roles: without them the base stream cannot be
    told from the tasks', and the base output would not be pinned."""
    if not any(stream_role(node) is not None for node in model.graph):
        raise SubtuneError(f"the graph records no stream roles (node metadata {ROLE_KEY!r}): it was compiled by an "
                           "older subtune or its node metadata was stripped; recompile it with this version "
                           "(subtune compile) before quantising it to int8")


def base_output(model: ir.Model) -> ir.Value:
    for value in model.graph.outputs:
        if value.name == "base":
            return value
    raise ValueError("the graph has no output named 'base': not a graph compiled by subtune")


def base_path(model: ir.Model) -> set[str]:
    """Names of the non-constant values `base` depends on (a merge's task inputs excluded)."""
    stack = [base_output(model)]
    check_stream_roles(model)
    seen: set[str] = set()
    while stack:
        value = stack.pop()
        if value.name in seen or _is_constant(value):
            continue
        seen.add(value.name)
        node = value.producer()
        if node is None:
            continue
        inputs = node.inputs[:1] if is_merge(node) else node.inputs
        stack.extend(v for v in inputs if v is not None)
    return seen


def extract_base_stream(model: ir.Model) -> BaseStream:
    base_output(model)
    check_stream_roles(model)
    stream = model.clone()
    graph = stream.graph
    aliases: dict[str, str] = {}
    for node in list(graph):  # rule 2; topological order resolves merge after merge
        if is_merge(node):
            out, shared = node.outputs[0], node.inputs[0]
            aliases[out.name] = aliases.get(shared.name, shared.name)
            out.replace_all_uses_with(shared)
    base = base_output(stream)
    split = _bypass_split(graph, base, aliases)  # rule 3
    graph.outputs.clear()  # rule 1
    graph.outputs.append(base)
    RemoveUnusedNodesPass()(stream)  # rule 4
    for value in [v for v in graph.inputs if not v.uses()]:
        graph.inputs.remove(value)
    if split is not None:
        chunk_name, flat = split
        flat.outputs[0].name = chunk_name  # the old chunk's producer is gone now: the name is free
    leaked = sorted(name for name in graph.initializers if name.startswith(TASK_PARAMETER_PREFIX))
    if leaked:  # a stream node without its role would pull task layers in
        raise RuntimeError(f"internal error: the base stream still depends on task parameters {leaked[:3]}")
    return BaseStream(stream, aliases)


def _bypass_split(graph: ir.Graph, base: ir.Value, aliases: dict[str, str]) -> tuple[str, ir.Node] | None:
    """Rule 3: returns the base chunk's name and the Flatten that now computes it."""
    split_nodes = [n for n in graph if is_split(n)]
    if not split_nodes:
        return None  # one stream at the end: no split
    inside = {v for n in split_nodes for v in n.outputs}
    sources = {v for n in split_nodes for v in n.inputs if v is not None and v not in inside and not _is_constant(v)
               and v.dtype not in SIZE_TYPES}
    if len(sources) != 1:
        raise RuntimeError(f"internal error: the split reads {len(sources)} streams, expected 1")
    source = sources.pop()
    chunk = _base_chunk(base, inside)
    if chunk.shape is not None and len(chunk.shape) != 2:
        raise RuntimeError(f"internal error: base features have rank {len(chunk.shape)}, expected 2")
    value = chunk
    while value is not source:  # the split's values the base chunk is computed from
        aliases[value.name] = source.name
        value = next(v for v in value.producer().inputs if v is not None and not _is_constant(v))
    aliases.pop(chunk.name)  # the chunk keeps its name in the base stream
    consumer = next(iter(chunk.consumers()))
    flat = ir.node("Flatten", [source], attributes={"axis": 1}, name="base_stream/Flatten",
                   metadata_props={ROLE_KEY: BASE})
    graph.insert_before(consumer, flat)
    flat.outputs[0].shape, flat.outputs[0].type = chunk.shape, chunk.type
    chunk.replace_all_uses_with(flat.outputs[0])
    return chunk.name, flat


def _base_chunk(base: ir.Value, inside: set[ir.Value]) -> ir.Value:
    """The split output that the base classifier reads."""
    stack, seen = [base], set()
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        if value in inside:
            return value
        node = value.producer()
        if node is not None:
            stack.extend(v for v in node.inputs if v is not None and not _is_constant(v))
    raise RuntimeError("internal error: the base output does not read the split")


def _is_constant(value: ir.Value) -> bool:
    if value.const_value is not None or value.is_initializer():
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant"
