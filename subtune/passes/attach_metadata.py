"""Record what was compiled (tasks, block ranges, base fingerprint, subtune version,
preprocessing) in the ONNX model's metadata, for the services that load it."""

from __future__ import annotations

import json

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult


class AttachMetadataPass(InPlacePass):
    def __init__(self, metadata: dict[str, object]):
        super().__init__()
        # Strings go in as they are; anything else as canonical JSON (sorted keys: reproducible).
        self.metadata = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}

    def call(self, model: ir.Model) -> PassResult:
        modified = False
        for key, value in sorted(self.metadata.items()):
            if model.metadata_props.get(key) != value:
                model.metadata_props[key] = value
                modified = True
        return PassResult(model, modified=modified)
