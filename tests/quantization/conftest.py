"""Test graphs for subtune/quantization.

`tiny_graph()` is a multi-task graph built by hand in the compiler's shape and naming (no export,
milliseconds to build): a stem and two base blocks, task `a` tuning block 1 and merging back,
task `z` forking before block 2 and ending there, the split at the end.

    images -> stem -> s1 -+-> block1 -> b1 --+-> merge_after_block1 -> m1 -+-> block2 -> c1 --+-> final_merge -> f
                          +-> a.block1 -> a1 +                             +-> fork_z -> z.block2 -> z1 +
    f -> ReduceMean -> split_heads/{Reshape, Slice_k, Squeeze_k} -> heads base, a, z

`tiny_base_only()` is the same base network with no tasks, built separately (other value names).
Both record each node's stream role as the compiler does (subtune/passes/record_stream_roles.py):
the roles, not the names, tell quantisation which nodes merge and split the streams.
The real-model fixtures compile torchvision ResNet-18 at 32 px once per session.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from subtune.passes.record_stream_roles import ROLE_KEY

C, SIZE, CLASSES = 4, 8, 5


def _weights(seed: int):
    g = np.random.default_rng(seed)
    conv = lambda cin: (g.standard_normal((C, cin, 3, 3)).astype(np.float32) * 0.4,  # noqa: E731
                        g.standard_normal(C).astype(np.float32) * 0.1)
    return {"stem": conv(3), "block1": conv(C), "block2": conv(C), "a.block1": conv(C), "z.block2": conv(C),
            "fc": (g.standard_normal((CLASSES, C)).astype(np.float32), g.standard_normal(CLASSES).astype(np.float32)),
            "a.head": (g.standard_normal((3, C)).astype(np.float32), np.zeros(3, np.float32)),
            "z.head": (g.standard_normal((2, C)).astype(np.float32), np.zeros(2, np.float32))}


PARAM = {"stem": "base.stem", "block1": "base.block1", "block2": "base.block2", "fc": "base.fc",
         "a.block1": "tasks.0.block1", "z.block2": "tasks.1.block2", "a.head": "tasks.0.head", "z.head": "tasks.1.head"}


class _Builder:
    def __init__(self, seed: int):
        self.w, self.nodes, self.inits = _weights(seed), [], []

    def const(self, name, values, dtype=np.int64):
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def conv_relu(self, x, layer, out):
        w, b = self.w[layer]
        p = PARAM[layer]
        self.inits += [numpy_helper.from_array(w, f"{p}.weight"), numpy_helper.from_array(b, f"{p}.bias")]
        self.nodes += [helper.make_node("Conv", [x, f"{p}.weight", f"{p}.bias"], [f"{out}_conv"], pads=[1, 1, 1, 1],
                                        name=f"node_conv_{out}"),
                       helper.make_node("Relu", [f"{out}_conv"], [out], name=f"node_relu_{out}")]
        return out

    def gemm(self, x, layer, out):
        w, b = self.w[layer]
        p = PARAM[layer]
        self.inits += [numpy_helper.from_array(w, f"{p}.weight"), numpy_helper.from_array(b, f"{p}.bias")]
        self.nodes.append(helper.make_node("Gemm", [x, f"{p}.weight", f"{p}.bias"], [out], transB=1,
                                           name=f"node_linear_{out}"))

    def model(self, outputs):
        x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])
        outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", n]) for name, n in outputs]
        g = helper.make_graph(self.nodes, "main_graph", [x], outs, initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
        model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(m))
        for node in model.graph:
            node.metadata_props[ROLE_KEY] = _role(node)
        return model


TASKS = {"tasks.0.": "task:a", "tasks.1.": "task:z"}


def _role(node: ir.Node) -> str:
    """The role the compiler would record for this hand-built node."""
    name = node.name or ""
    if name.startswith(("merge_after_block", "final_merge")):
        return "merge"
    if name.startswith("split_heads/"):
        return "split"
    if name.startswith("fork_z_"):
        return "fork:z"
    for v in node.inputs:
        for prefix, role in TASKS.items():
            if v is not None and v.name.startswith(prefix):
                return role
    producers = {v.producer() for v in node.inputs if v is not None and v.producer() is not None}
    roles = {_role(p) for p in producers}
    return roles.pop() if len(roles) == 1 and roles != {"merge"} and roles != {"split"} else "base"


def tiny_graph(seed: int = 0) -> ir.Model:
    b = _Builder(seed)
    s1 = b.conv_relu("images", "stem", "s1")
    a1 = b.conv_relu(s1, "a.block1", "a1")
    b1 = b.conv_relu(s1, "block1", "b1")
    b.nodes.append(helper.make_node("Concat", [b1, a1], ["m1"], axis=0, name="merge_after_block1/Concat"))
    b.nodes += [helper.make_node("Reshape", ["m1", b.const("fork_shape", [2, -1, C, SIZE, SIZE])], ["fork_view"],
                                 name="fork_z_before_block2/Reshape"),
                helper.make_node("Gather", ["fork_view", b.const("zero", 0)], ["z_in"], axis=0,
                                 name="fork_z_before_block2/Gather")]
    c1 = b.conv_relu("m1", "block2", "c1")
    z1 = b.conv_relu("z_in", "z.block2", "z1")
    b.nodes.append(helper.make_node("Concat", [c1, z1], ["f"], axis=0, name="final_merge/Concat"))
    b.nodes.append(helper.make_node("ReduceMean", ["f", b.const("axes", [2, 3])], ["mean"], keepdims=1,
                                    name="node_mean"))
    b.nodes.append(helper.make_node("Reshape", ["mean", b.const("split_shape", [3, -1, C])], ["view"],
                                    name="split_heads/Reshape"))
    for k, feat in enumerate(["base_feat", "a_feat", "z_feat"]):
        b.nodes += [helper.make_node("Slice", ["view", b.const(f"start{k}", [k]), b.const(f"end{k}", [k + 1]),
                                               b.const(f"axis{k}", [0])], [f"slice{k}"], name=f"split_heads/Slice_{k}"),
                    helper.make_node("Squeeze", [f"slice{k}", b.const(f"sq{k}", [0])], [feat],
                                     name=f"split_heads/Squeeze_{k}")]
    b.gemm("base_feat", "fc", "base")
    b.gemm("a_feat", "a.head", "a")
    b.gemm("z_feat", "z.head", "z")
    return b.model([("base", CLASSES), ("a", 3), ("z", 2)])


def tiny_base_only(seed: int = 0) -> ir.Model:
    b = _Builder(seed)
    x = b.conv_relu(b.conv_relu(b.conv_relu("images", "stem", "x1"), "block1", "x2"), "block2", "x3")
    b.nodes += [helper.make_node("ReduceMean", [x, b.const("axes", [2, 3])], ["pooled"], keepdims=1),
                helper.make_node("Flatten", ["pooled"], ["features"], axis=1)]
    b.gemm("features", "fc", "base")
    return b.model([("base", CLASSES)])


def images(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)


def run(model: ir.Model, x: np.ndarray, outputs=None) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(outputs, {"images": x})


# --------------------------------------------------------------------------- real models


@pytest.fixture(scope="session")
def resnet18_graphs(resnet18_base):
    """ResNet-18 at 32 px compiled twice: alone, and with four tasks (overlapping, disjoint,
    ending at the last block, Siamese). fp32, unverified: the compiler's own tests verify it."""
    from subtune.compiler.pipeline import CompileOptions, compile_plan
    from subtune.compiler.plan import Plan
    from subtune.synthetic import synthetic_task

    base = resnet18_base
    _, bb = base.build()
    specs = {"early": [2, 3], "overlap": [3, 4, 5], "last": [7, 8], "siam": [5, 6]}
    tasks = [synthetic_task(base, name, blocks, seed=i, siamese=name == "siam", backbone=bb)
             for i, (name, blocks) in enumerate(specs.items(), start=1)]
    graphs = {}
    for key, ts in (("base_only", []), ("four_tasks", tasks)):
        plan = Plan(base, ts, input_size=(32, 32))
        graphs[key] = compile_plan(plan, CompileOptions(verify=False)).onnx
    return graphs
