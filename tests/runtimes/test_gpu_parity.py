"""A compiled multi-task graph on the GPU computes what it computes on the CPU: ONNX Runtime's CUDA
provider against its CPU provider, and the lowered PyTorch module on CUDA against the ONNX graph on
the CPU, at batch 1 and 4. Marked `gpu`: they skip, with the reason, where no GPU is usable."""

from __future__ import annotations

import numpy as np
import pytest

# The CUDA provider and cuDNN pick convolution algorithms (TF32 included) that reorder and round
# sums differently from the CPU's: relative to each output's scale, 1e-2 is far above that
# rounding and far below what a wrong graph gives (order 1).
GPU_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from subtune.compiler.pipeline import CompileOptions, compile_plan, serialize
    from subtune.compiler.plan import Plan
    from subtune.models import make_base
    from subtune.synthetic import synthetic_task

    base = make_base("subtune:tiny_resnet", {"num_classes": 5}, seed=0)
    _, bb = base.build()
    tasks = [synthetic_task(base, "early", [2, 3], seed=1, backbone=bb),
             synthetic_task(base, "late", [4], seed=2, backbone=bb)]
    plan = compile_plan(Plan(base, tasks, input_size=(32, 32)), CompileOptions())
    path = tmp_path_factory.mktemp("gpu") / "model.onnx"
    path.write_bytes(serialize(plan))
    return path, plan


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 4])
def test_compiled_graph_on_cuda_provider_matches_cpu(compiled, batch):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"CUDAExecutionProvider not available (ONNX Runtime here offers {ort.get_available_providers()})")
    from subtune.runtimes.onnxruntime import OnnxrtRunner, SessionFromOnnx

    path, plan = compiled
    images = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    with OnnxrtRunner(SessionFromOnnx(path, provider="cpu")) as cpu, \
            OnnxrtRunner(SessionFromOnnx(path, provider="cuda")) as gpu:
        assert gpu.describe()["execution_providers"][0] == "CUDAExecutionProvider"
        want, got = cpu.infer({"images": images}), gpu.infer({"images": images})
    assert list(got) == plan.output_names
    for name in plan.output_names:
        assert got[name].shape == (batch, want[name].shape[1])
        assert _relative(got[name], want[name]) <= GPU_TOLERANCE, name


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 4])
def test_lowered_module_on_cuda_matches_onnx_on_cpu(compiled, batch):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    from subtune.runtimes.onnxruntime import OnnxrtRunner, SessionFromOnnx

    path, plan = compiled
    images = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    module = plan.module.to("cuda").eval()
    with torch.no_grad():
        outs = module(torch.from_numpy(images).to("cuda"))
    got = dict(zip(plan.output_names, (o.float().cpu().numpy() for o in outs)))
    with OnnxrtRunner(SessionFromOnnx(path, provider="cpu")) as cpu:
        want = cpu.infer({"images": images})
    for name in plan.output_names:
        assert _relative(got[name], want[name]) <= GPU_TOLERANCE, name
