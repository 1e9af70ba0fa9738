#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU, in one short run:
#   1. the `gpu`-marked tests that need no TensorRT (ONNX Runtime's CUDA provider, PyTorch CUDA);
#   2. the compiled graph against the alternatives on the GPU (bench/compare_resnet50.py, ResNet-50
#      @224, k = 1, 2, 4, 8 tasks on blocks 13-14, batch 1, 8, 32): ONNX Runtime's CUDA provider,
#      then PyTorch eager on CUDA.
#
#   bash bench/gpu_check.sh OUT [WHEELS_DIR]
#
# WHEELS_DIR (optional): wheels to install first into /tmp/site without dependencies, e.g.
# onnxruntime-gpu where the machine has only the CPU build. The CUDA libraries ONNX Runtime's CUDA
# provider loads are taken from NVIDIA's wheels already installed beside PyTorch (nvidia-*-cu13).
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_check.sh OUT [WHEELS_DIR]}
WHEELS=${2:-}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -n "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || { echo "could not install the wheels in $WHEELS" >&2; exit 1; }
  export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH#$PWD}
fi
libs=$("$PY" - <<'PYEOF'
import glob, os, site
dirs = {os.path.dirname(p) for sp in site.getsitepackages()
        for p in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(dirs)))
PYEOF
)
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  lscpu | grep -E 'Model name|^CPU\(s\)'
  "$PY" -c "import torch, onnxruntime as o; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '|', \
torch.cuda.get_device_name(0)); print('onnxruntime', o.__version__, o.get_available_providers())"
} 2>&1 | tee "$OUT/machine.txt"

"$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests/runtimes tests/compiler 2>&1 | tee "$OUT/gpu_tests.txt"

common=(--windows 13-14 --task-counts 1,2,4,8 --batch 1,8,32 --warmup 20 --iters 50 --repeats 5)
"$PY" bench/compare_resnet50.py --provider cuda "${common[@]}" -o "$OUT/ort_cuda" 2>&1 | grep -v '^\s*$' | tail -30
"$PY" bench/compare_resnet50.py --runtime torch --device cuda "${common[@]}" -o "$OUT/torch_cuda" 2>&1 \
  | grep -v '^\s*$' | tail -30
