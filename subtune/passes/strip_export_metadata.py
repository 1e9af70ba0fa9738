"""Drop the exporter's per-node debugging metadata (stack traces with local file paths, module
scopes) and doc strings, so that the same inputs compile to byte-identical files anywhere."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult


class StripExportMetadataPass(InPlacePass):
    def call(self, model: ir.Model) -> PassResult:
        modified = False
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.metadata_props or node.doc_string:
                node.metadata_props.clear()
                node.doc_string = None
                modified = True
        for value in [*model.graph.inputs, *model.graph.outputs, *model.graph.initializers.values()]:
            if value.metadata_props:
                value.metadata_props.clear()
                modified = True
        if model.graph.doc_string or model.doc_string:
            model.graph.doc_string = model.doc_string = None
            modified = True
        return PassResult(model, modified=modified)
