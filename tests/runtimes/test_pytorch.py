from __future__ import annotations

import numpy as np
import pytest
import torch

from subtune.errors import SubtuneError
from subtune.runtimes import TensorSpec, TorchRunner

SPEC = {"images": TensorSpec((None, 4), "float32")}


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)

    def forward(self, images):
        return self.a(images), self.b(images)


def test_outputs_are_named_in_order_and_match_eager():
    torch.manual_seed(0)
    module = TwoHeads().eval()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with TorchRunner(module, inputs=SPEC, output_names=["a", "b"], threads=1) as runner:
        out = runner.infer({"images": x})
        assert runner.last_inference_time() > 0
        info = runner.describe()
    with torch.no_grad():
        a, b = module(torch.from_numpy(x))
    np.testing.assert_array_equal(out["a"], a.numpy())
    np.testing.assert_array_equal(out["b"], b.numpy())
    assert info["runtime"] == "torch" and info["intra_op_threads"] == 1 and info["device"] == "cpu"


def test_threads_apply_while_active_only():
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    with TorchRunner(torch.nn.Identity(), inputs=SPEC, output_names=["y"], threads=wanted) as runner:
        assert torch.get_num_threads() == wanted and runner.describe()["intra_op_threads"] == wanted
    assert torch.get_num_threads() == before


def test_a_loader_is_called_on_activation_only():
    made = []

    def load():
        made.append(1)
        return torch.nn.Linear(4, 3)

    runner = TorchRunner(load, inputs=SPEC, output_names=["y"])
    assert made == []
    with runner:
        assert runner.infer({"images": np.zeros((2, 4), np.float32)})["y"].shape == (2, 3)
    assert made == [1]


def test_wrong_number_of_output_names_is_an_error():
    with TorchRunner(TwoHeads(), inputs=SPEC, output_names=["only_one"]) as runner:
        with pytest.raises(SubtuneError, match="returned 2 outputs"):
            runner.infer({"images": np.zeros((1, 4), np.float32)})


def test_cuda_device_without_a_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is available here")
    with pytest.raises(SubtuneError, match="no CUDA GPU"):
        TorchRunner(torch.nn.Identity(), inputs=SPEC, output_names=["y"], device="cuda").activate()
