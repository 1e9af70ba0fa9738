"""Layer sensitivity: the error each unit (fallback.py) adds to each output when it alone is
quantised and every other node computes in fp32, on the first `images` check images, against the
fp32 graph's outputs (the relative logit error of compare.py).

Two ways to the same numbers:

  one graph (`sensitivity_one_graph`, what mixed.py uses): a one-unit graph differs from the
      fp32 graph only from that unit on. One ONNX graph holds the fp32 graph once and, per unit,
      a copy of the unit reading its quantised inputs (the QuantizeLinear -> DequantizeLinear of
      each activation it reads, its int8 weights dequantised: the nodes the one-unit graph has)
      followed by a copy of every node downstream of it, renamed. The copies share the fp32
      graph's weights and read its values wherever they are not downstream of the unit, so the
      part upstream of a unit is computed once for all units, and a few sessions (at most
      CHUNK_NODES copied nodes each) replace one session per unit. An output a unit does not
      reach has error 0 (its one-unit graph computes it as fp32 does).
  one session per unit (`sensitivity_per_session`): each one-unit graph made by fall_back and
      run in a session of its own; slower, and the reference the one graph is tested against
      (tests/quantization/test_sensitivity.py). Taken when the one graph cannot be built: a unit
      whose quantised inputs are not in the form ONNX Runtime's quantiser writes, or fp32 and
      int8 weights together past protobuf's 2 GiB (NotOneGraph says which).

Both run the copies as the check runs the graph (QDQ fused, or run as written for the tensorrt
form: compare.py), so ONNX Runtime sees the same node patterns around each unit either way.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from subtune.quantization.compare import EMULATE_QDQ, EVAL_BATCH, compare_output, run_batches
from subtune.quantization.fallback import QUANTISED_SUFFIX, Unit, dq_source, fall_back
from subtune.quantization.files import EXTERNAL_DATA_THRESHOLD, runnable
from subtune.runtimes.onnxruntime import every_task_feeds, make_session

log = logging.getLogger(__name__)

CHUNK_NODES = 4000  # copied nodes per sensitivity session: ResNet-50 with 4 tasks (10,280 copied) takes 3
# Below this relative logit error, a one-graph error is rounding, not quantisation: where a copy runs after a merge,
# ONNX Runtime may lay out its float convolutions differently from the fp32 nodes beside it (NCHWc or not), which
# moves outputs the unit does not feed by ~1e-7. One int8 step is 1/255 of a range: units measure 1e-4 and more.
ROUNDING = 1e-5
COPY = "__sens{}"  # suffix of a value or node copied for the unit numbered {}


class NotOneGraph(Exception):
    """The one-graph sensitivity cannot be built for this graph; the message says why."""


@dataclass
class Sensitivity:
    rows: list[dict]  # per unit: Unit.to_json() + relative_logit_error {output: error} + max_error
    outputs: list[str]  # the outputs measured
    images: int
    method: str  # "one graph" or "one session per unit"
    sessions: int
    seconds: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)


def _row(unit: Unit, errors: dict[str, float]) -> dict:
    return {**unit.to_json(), "relative_logit_error": errors, "max_error": max(errors.values(), default=0.0)}


def sensitivity_per_session(quantised: ir.Model, weights, units: list[Unit], refs: list[np.ndarray],
                            images: np.ndarray, names: list[str], outputs: list[str], *,
                            emulate_qdq: bool) -> Sensitivity:
    """Each unit's one-unit graph (fall_back of every other node) in its own session, against
    `refs`, the fp32 graph's outputs `names` on `images` (or more images: the first are used)."""
    from tqdm import tqdm

    every = {n.name for n in quantised.graph}
    ref_of = dict(zip(names, refs))
    rows = []
    for unit in tqdm(units, desc="layer sensitivity", unit="layer", file=sys.stderr, disable=not sys.stderr.isatty(),
                     leave=False):
        with runnable(fall_back(quantised, weights, every - {unit.node})) as alone:
            gots = run_batches(alone, images, outputs, emulate_qdq=emulate_qdq)
        errors = {o: compare_output(o, ref_of[o][:len(images)], got).relative_logit_error
                  for o, got in zip(outputs, gots)}
        rows.append(_row(unit, errors))
    return Sensitivity(rows, outputs, len(images), "one session per unit", sessions=len(units))


def sensitivity_one_graph(quantised: ir.Model, weights, units: list[Unit], images: np.ndarray,
                          outputs: list[str], *, emulate_qdq: bool, chunk_nodes: int = CHUNK_NODES) -> Sensitivity:
    """The module docstring's one graph, in chunks of at most `chunk_nodes` copied nodes. Each
    copy is compared with the fp32 outputs of its own session (a separate fp32 session may pick
    other kernels, 1e-7 apart); errors below ROUNDING count as 0. Raises NotOneGraph where the
    graph cannot be built."""
    from tqdm import tqdm

    builder = _SensitivityGraphs(quantised, weights, outputs)
    copies = [builder.copy(k, unit) for k, unit in enumerate(units)]
    errors: dict[str, dict[str, float]] = {u.node: {o: 0.0 for o in outputs} for u in units}
    chunks = _chunks([c for c in copies if c.fetches], chunk_nodes)
    config = dict([EMULATE_QDQ]) if emulate_qdq else None
    for chunk in tqdm(chunks, desc="layer sensitivity", unit="graph", file=sys.stderr,
                      disable=not sys.stderr.isatty(), leave=False):
        session = make_session(builder.graph(chunk), config=config)
        fetch = list(outputs) + [name for c in chunk for name in c.fetches.values()]
        parts = [session.run(fetch, every_task_feeds(session, images[i:i + EVAL_BATCH]))
                 for i in range(0, len(images), EVAL_BATCH)]
        got = {name: np.concatenate([p[k] for p in parts]).astype(np.float32) for k, name in enumerate(fetch)}
        del session, parts
        for c in chunk:
            for o, name in c.fetches.items():
                error = compare_output(o, got[o], got[name]).relative_logit_error
                errors[c.unit.node][o] = error if error >= ROUNDING else 0.0
    rows = [_row(u, errors[u.node]) for u in units]
    copied = sum(len(c.nodes) for c in copies)
    return Sensitivity(rows, outputs, len(images), "one graph", sessions=len(chunks),
                       extra={"copied_nodes": copied, "fp32_nodes": len(builder.nodes),
                              "units_reaching_outputs": sum(bool(c.fetches) for c in copies)})


@dataclass
class _Copy:
    unit: Unit
    nodes: list[onnx.NodeProto]  # the unit on quantised inputs, then everything downstream of it, renamed
    initializers: set[str]  # of the quantised graph: the int8 weights and the Q/DQ scales and zero points
    fetches: dict[str, str]  # output -> the copy's name for it


class _SensitivityGraphs:
    """Builds the copies of the module docstring from the quantised graph and the fp32 graph that
    falling back every node of it gives (the same node names, Q/DQ gone)."""

    def __init__(self, quantised: ir.Model, weights, outputs: list[str]):
        self.quantised = quantised
        self.weights = weights
        fp32 = fall_back(quantised, weights, {n.name for n in quantised.graph})
        total = sum(v.const_value.nbytes for g in (fp32, quantised) for v in g.graph.initializers.values()
                    if v.const_value is not None)
        if total >= EXTERNAL_DATA_THRESHOLD:
            raise NotOneGraph(f"the fp32 and int8 weights together ({total / 2**30:.2f} GiB) are too large for one "
                              "serialized graph")
        self.fp32 = ir.to_proto(fp32)
        self.nodes = list(self.fp32.graph.node)  # topological order
        self.index = {n.name: i for i, n in enumerate(self.nodes)}
        if len(self.index) != len(self.nodes):
            raise NotOneGraph("node names are not unique")
        for n in self.nodes:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
                raise NotOneGraph(f"node {n.name!r} ({n.op_type}) holds a subgraph")
        self.values = {v.name for v in self.fp32.graph.input} | {t.name for t in self.fp32.graph.initializer}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            self.values.update(n.output)
            for name in n.input:
                if name:
                    self.consumers[name].append(i)
        self.outputs = outputs
        self.reaches = self._reaching(outputs)  # node indices some measured output depends on
        self.q_initializers = {name: v for name, v in quantised.graph.initializers.items()}

    def _reaching(self, outputs: list[str]) -> set[int]:
        producer = {o: i for i, n in enumerate(self.nodes) for o in n.output}
        stack, seen = [producer[o] for o in outputs if o in producer], set()
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            stack.extend(producer[x] for x in self.nodes[i].input if x in producer)
        return seen

    def copy(self, k: int, unit: Unit) -> _Copy:
        start = self.index.get(unit.node)
        if start is None:
            raise NotOneGraph(f"unit {unit.node!r} is not in the fp32 graph falling back every node gives")
        if start not in self.reaches:
            return _Copy(unit, [], set(), {})
        suffix = COPY.format(k)
        q_node = next(n for n in self.quantised.graph if n.name == unit.node)
        head = onnx.NodeProto()
        head.CopyFrom(self.nodes[start])
        chain, initializers = [], set()
        for i, value in enumerate(q_node.inputs):
            quantised_input = self._quantised_input(value, suffix, chain, initializers)
            if quantised_input is not None:
                head.input[i] = quantised_input
        renamed: dict[str, str] = {}
        nodes = chain + [self._renamed(head, suffix, renamed, rename_inputs=False)]
        for i in range(start + 1, len(self.nodes)):  # topological: a node's producers come before it
            node = self.nodes[i]
            if i in self.reaches and any(x in renamed for x in node.input):
                nodes.append(self._renamed(node, suffix, renamed))
        fetches = {o: renamed[o] for o in self.outputs if o in renamed}
        return _Copy(unit, nodes, initializers, fetches)

    def _quantised_input(self, value: ir.Value | None, suffix: str, chain: list, initializers: set) -> str | None:
        """The name the unit's copy reads for this input as the one-unit graph has it (appending the
        Q/DQ copies to `chain`), or None where the one-unit graph reads what fp32 reads."""
        dq = dq_source(value)
        if dq is None:
            return None
        source = dq.inputs[0]
        if source.is_initializer() or source.const_value is not None:
            if source.name.removesuffix(QUANTISED_SUFFIX) not in self.weights:
                return None  # fall_back keeps this DequantizeLinear: fp32 reads it too
            if source.name not in self.q_initializers:
                raise NotOneGraph(f"{dq.name!r} dequantises {source.name!r}, a constant that is not an initializer")
            chain.append(self._qdq_copy(dq, [source.name], suffix, initializers))
            return chain[-1].output[0]
        q = source.producer()
        if q is None or q.op_type != "QuantizeLinear":
            return None  # an int8 graph input: fall_back keeps it
        float_input = q.inputs[0].name
        if float_input not in self.values:
            raise NotOneGraph(f"{float_input!r}, quantised for unit {dq.name!r}, is not a value of the fp32 graph")
        chain.append(self._qdq_copy(q, [float_input], suffix, initializers))
        chain.append(self._qdq_copy(dq, [chain[-1].output[0]], suffix, initializers))
        return chain[-1].output[0]

    def _qdq_copy(self, node: ir.Node, data: list[str], suffix: str, initializers: set) -> onnx.NodeProto:
        proto = ir.serde.serialize_node(node)
        for name in list(proto.input)[len(data):]:  # scale, zero point
            if name and name not in self.q_initializers:
                raise NotOneGraph(f"{node.op_type} {node.name!r} reads {name!r}, which is not an initializer")
        initializers.update(n for n in list(proto.input)[len(data):] if n)
        initializers.update(n for n in data if n in self.q_initializers and n not in self.values)
        proto.input[:len(data)] = data
        proto.output[:] = [o + suffix for o in proto.output]
        proto.name = proto.name + suffix
        return proto

    @staticmethod
    def _renamed(node: onnx.NodeProto, suffix: str, renamed: dict[str, str], rename_inputs: bool = True):
        out = onnx.NodeProto()
        out.CopyFrom(node)
        if rename_inputs:
            out.input[:] = [renamed.get(x, x) for x in node.input]
        for j, o in enumerate(node.output):
            if o:
                renamed[o] = out.output[j] = o + suffix
        out.name = node.name + suffix
        return out

    def graph(self, chunk: list[_Copy]) -> bytes:
        """The fp32 graph's measured outputs and the nodes they and the chunk's copies read, the
        copies, their fetches as further outputs."""
        model = onnx.ModelProto()
        model.CopyFrom(self.fp32)
        graph = model.graph
        copied = [n for c in chunk for n in c.nodes]
        needed = {x for n in copied for x in n.input} | set(self.outputs)
        keep = []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                keep.append(node)
                needed.update(node.input)
        del graph.node[:]
        graph.node.extend(reversed(keep))
        graph.node.extend(copied)
        kept_inits = [t for t in graph.initializer if t.name in needed]
        del graph.initializer[:]
        graph.initializer.extend(kept_inits)
        extra = sorted({n for c in chunk for n in c.initializers} - {t.name for t in kept_inits})
        graph.initializer.extend(ir.serde.serialize_tensor(self.q_initializers[n].const_value) for n in extra)
        shapes = {v.name: v for v in self.fp32.graph.output}
        del graph.output[:]
        graph.output.extend(shapes[o] for o in self.outputs)
        for c in chunk:
            for o, name in c.fetches.items():
                out = graph.output.add()
                out.CopyFrom(shapes[o])
                out.name = name
        del graph.value_info[:]
        return model.SerializeToString()


def _chunks(copies: list[_Copy], limit: int) -> list[list[_Copy]]:
    chunks, size = [[]], 0
    for c in copies:
        if chunks[-1] and size + len(c.nodes) > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(c)
        size += len(c.nodes)
    return [c for c in chunks if c]
