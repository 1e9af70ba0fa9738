"""Drop the exporter's per-node debugging metadata (stack traces with local file paths, module
scopes) and doc strings, so that the same inputs compile to byte-identical files anywhere.
subtune's own node metadata (keys starting `subtune.`, such as the stream roles of
record_stream_roles.py) stays."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

KEEP_PREFIX = "subtune."


def _strip(props) -> bool:
    drop = [key for key in props if not key.startswith(KEEP_PREFIX)]
    for key in drop:
        del props[key]
    return bool(drop)


class StripExportMetadataPass(InPlacePass):
    def call(self, model: ir.Model) -> PassResult:
        modified = False
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if _strip(node.metadata_props):
                modified = True
            if node.doc_string:
                node.doc_string = None
                modified = True
        for value in [*model.graph.inputs, *model.graph.outputs, *model.graph.initializers.values()]:
            if _strip(value.metadata_props):
                modified = True
        if model.graph.doc_string or model.doc_string:
            model.graph.doc_string = model.doc_string = None
            modified = True
        return PassResult(model, modified=modified)
