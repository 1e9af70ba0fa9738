"""Training-time image augmentation (paper Appendix A: random resized crop and horizontal flip).

It changes the images every epoch, so it cannot be applied to cached activations: a run with
augmentation takes the full forward path through the frozen layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from subtune.errors import SubtuneError

AUGMENTATIONS = ("none", "flip", "crop-flip")
CROP_SCALE = (0.5, 1.0)  # gentler than ImageNet's (0.08, 1): low-resolution images lose too much
CROP_RATIO = (3 / 4, 4 / 3)


def check_augment(name: str) -> str:
    if name not in AUGMENTATIONS:
        raise SubtuneError(f"`augment` {name!r}: expected one of {', '.join(AUGMENTATIONS)}")
    return name


def augment(images: torch.Tensor, name: str, g: torch.Generator) -> torch.Tensor:
    if name == "none":
        return images
    if name == "crop-flip":
        images = _random_resized_crop(images, g)
    flip = torch.rand(len(images), generator=g) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def _random_resized_crop(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = images.shape
    out = torch.empty_like(images)
    for i in range(n):
        area = h * w * float(torch.empty(1).uniform_(*CROP_SCALE, generator=g))
        log_r = torch.empty(1).uniform_(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator=g)
        ratio = math.exp(float(log_r))
        ch = min(h, max(1, round(math.sqrt(area / ratio))))
        cw = min(w, max(1, round(math.sqrt(area * ratio))))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
        crop = images[i: i + 1, :, top: top + ch, left: left + cw]
        out[i] = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
    return out
