"""FP16 conversion: weights and activations in half precision, for GPU runtimes.

Kept in fp32:
  1. Graph inputs and outputs, with a Cast at each boundary: the FP16 graph is a drop-in for the
     fp32 one (same preprocessing, same consumers, same `images`/logit dtypes), and one cast of
     the input costs nothing next to the first convolution.
  2. Normalisation statistics and softmax (FP32_OPS): sums over many terms, where fp16 loses
     digits that the next layer amplifies.
  3. The heads, the nodes producing graph outputs: the logits are compared and thresholded. In a
     --task-select graph a task's output comes from its fill (stream role `fill:<task>`, which
     scatters the logits into a NaN batch): the fill and the head feeding it stay fp32.
Everything else (convolutions, matrix products, activations, fork/merge/split) runs in fp16.
ONNX Runtime's CPU provider runs the result (casting where it lacks fp16 kernels), which is what
verification uses; speed is for the GPU runtimes.
"""

from __future__ import annotations

import contextlib
import warnings

import onnx
import onnx_ir as ir

from subtune.passes.record_stream_roles import FILL_PREFIX, ROLE_KEY, TASK_PREFIX
from subtune.quantization.calibration import quiet_onnxruntime_quantization
from subtune.quantization.files import on_disk, too_large

FP32_OPS = ["LayerNormalization", "GroupNormalization", "InstanceNormalization", "BatchNormalization",
            "ReduceMean", "Softmax"]


def convert_fp16(model: ir.Model) -> tuple[ir.Model, dict]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    with contextlib.ExitStack() as stack:
        if too_large(model):  # as a file, its weights as external data, which the converter shape-infers from
            path = stack.enter_context(on_disk(model))
            source, structure = str(path), onnx.load(path, load_external_data=False)
        else:
            source = structure = ir.to_proto(model)
        heads = sorted(_heads(structure.graph))
        stack.enter_context(warnings.catch_warnings())
        stack.enter_context(quiet_onnxruntime_quantization())
        warnings.simplefilter("ignore")  # value-range notes about weights rounded to fp16
        converted = convert_float_to_float16(source, keep_io_types=True,
                                             op_block_list=DEFAULT_OP_BLOCK_LIST + FP32_OPS, node_block_list=heads)
    kept = sorted({n.op_type for n in model.graph if n.op_type in FP32_OPS})
    report = {"scheme": {"weights": "fp16", "activations": "fp16", "graph_io": "fp32 (Cast at the boundary)",
                         "kept_fp32": {"ops": kept, "heads": heads}}}
    return ir.from_proto(converted), report


def _heads(graph) -> set[str]:
    """Rule 3: names of the nodes producing graph outputs, and behind a fill the fill's own nodes and
    the head it scatters."""
    producer = {out: node for node in graph.node for out in node.output}
    role = {node.name: next((p.value for p in node.metadata_props if p.key == ROLE_KEY), "") for node in graph.node}
    stack = [producer[v.name] for v in graph.output if v.name in producer]
    heads: set[str] = set()
    while stack:
        node = stack.pop()
        if node.name in heads:
            continue
        heads.add(node.name)
        if role[node.name].startswith(FILL_PREFIX):
            stack += [p for p in (producer.get(name) for name in node.input)
                      if p is not None and role[p.name].startswith((FILL_PREFIX, TASK_PREFIX))]
    return heads
