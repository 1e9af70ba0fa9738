"""Name the graph's dynamic batch dimension `batch` (the exporter calls it after an internal
symbol such as `s34`), so a service reading the graph sees `images[batch, 3, H, W]`.

Rules:
  1. The symbol is the first dimension of the graph input `images`; a fixed or missing first
     dimension leaves the graph unchanged (fail reason in `self.reason`).
  2. Every shape in the graph (inputs, outputs, intermediate values, subgraphs) that mentions
     the symbol gets it renamed, whole word only: `s34` -> `batch`, `2*s34` -> `2*batch`, while
     `s345` is left alone.
  3. A graph whose symbol is already `batch` is a no-op.
"""

from __future__ import annotations

import re

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

BATCH = "batch"


class NameBatchDimPass(InPlacePass):
    def __init__(self, input_name: str = "images", name: str = BATCH):
        super().__init__()
        self.input_name, self.name = input_name, name
        self.reason: str | None = None  # why the pass changed nothing, when it did not

    def call(self, model: ir.Model) -> PassResult:
        self.reason = None
        images = next((v for v in model.graph.inputs if v.name == self.input_name), None)
        first = images.shape[0] if images is not None and images.shape is not None and len(images.shape) else None
        if not isinstance(first, ir.SymbolicDim) or not first.value:  # rule 1
            self.reason = f"graph input {self.input_name!r} has no symbolic first dimension"
            return PassResult(model, modified=False)
        old = first.value
        if old == self.name:  # rule 3
            self.reason = f"the batch dimension is already named {self.name!r}"
            return PassResult(model, modified=False)
        word = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(old)}(?![A-Za-z0-9_])")
        modified = False
        for value in _values(model.graph):  # rule 2
            shape = value.shape
            if shape is None or not any(isinstance(d, ir.SymbolicDim) and d.value and word.search(d.value)
                                        for d in shape):
                continue
            value.shape = ir.Shape([ir.SymbolicDim(word.sub(self.name, d.value))
                                    if isinstance(d, ir.SymbolicDim) and d.value else d for d in shape])
            modified = True
        return PassResult(model, modified=modified)


def _values(graph: ir.Graph):
    seen: set[int] = set()
    for g in (graph, *(a for n in ir.traversal.RecursiveGraphIterator(graph) for a in _subgraphs(n))):
        for v in (*g.inputs, *g.outputs):
            if id(v) not in seen:
                seen.add(id(v))
                yield v
        for node in g:
            for v in node.outputs:
                if id(v) not in seen:
                    seen.add(id(v))
                    yield v


def _subgraphs(node: ir.Node):
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.as_graph()
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.as_graphs()
