from __future__ import annotations

import numpy as np
import pytest

IN_FEATURES, OUT_FEATURES = 4, 3


def affine_onnx() -> tuple[bytes, np.ndarray, np.ndarray]:
    """y = x @ W + b with a dynamic batch axis; returns the model and W, b to check against."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((IN_FEATURES, OUT_FEATURES)).astype(np.float32)
    b = rng.standard_normal(OUT_FEATURES).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["images", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", IN_FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUT_FEATURES])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    # IR version 10: what every ONNX Runtime since 1.16 loads (onnx 1.23 would write 14 by default)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return model.SerializeToString(), w, b


@pytest.fixture(scope="session")
def affine():
    return affine_onnx()


@pytest.fixture
def affine_path(tmp_path, affine):
    path = tmp_path / "affine.onnx"
    path.write_bytes(affine[0])
    return path
