#!/usr/bin/env bash
# The main job, end to end on CPU, in a few minutes on 2 cores:
#   ImageNet-pretrained EfficientNet-Lite0 base
#   -> two tasks SubTuned on Fashion-MNIST (the ten classes; tops/bottoms/footwear/bags)
#   -> one compiled multi-task ONNX graph, verified against PyTorch eager
#   -> a latency table: base alone vs one model per task vs split sessions vs the compiled graph
#   -> a Triton model repository (image bytes in, every task's classes out) that `subtune serve` serves
#   -> the C++ library and CLI, classifying two Fashion-MNIST test images from the same graph.
# Everything lands in runs/main/ (override with OUT=...). EPOCHS=50 follows the paper's
# low-data setting; the default 10 keeps the job short.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # idle OpenMP threads must not spin on a busy 2-core box
OUT=${OUT:-runs/main}
EPOCHS=${EPOCHS:-10}
mkdir -p "$OUT"
subtune --version

subtune base --arch timm:efficientnet_lite0 --pretrained-package -o "$OUT/base.pt"
subtune train "$OUT/base.pt" --data fashion-mnist --limit 1250 --image-size 64 --epochs "$EPOCHS" \
  --blocks 15-16 --name fashion10 --test --test-limit 2000 -o "$OUT/fashion10.pt"
subtune train "$OUT/base.pt" --data fashion-mnist --limit 1250 --image-size 64 --epochs "$EPOCHS" \
  --blocks 16 --name coarse4 --label-map "tops=0,2,4,6;bottoms=1,3;footwear=5,7,9;bags=8" \
  --test --test-limit 2000 -o "$OUT/coarse4.pt"
subtune-compile "$OUT/base.pt" "$OUT/fashion10.pt" "$OUT/coarse4.pt" -o "$OUT/model.onnx"
subtune-bench --compare "$OUT/base.pt" "$OUT/fashion10.pt" "$OUT/coarse4.pt" --image-size 64 --batch 1,8 \
  --json "$OUT/latency.json" --plot "$OUT/latency.png"
subtune triton-repo "$OUT/model.onnx" -o "$OUT/triton" --preprocess --force   # serve: subtune serve $OUT/triton

# Two held-out images as PNG files, then the C++ CLI on them (the build fetches its SDK once, then is cached)
python3 - "$OUT" <<'PY'
import gzip, sys
import numpy as np
from PIL import Image
raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
for i in (0, 1):
    Image.fromarray(images[i]).convert("RGB").save(f"{sys.argv[1]}/test{i}.png")
PY
cmake -S cpp -B build/cpp -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build/cpp -j 2 >/dev/null
build/cpp/subtune-infer "$OUT/model.onnx" --image "$OUT/test0.png" "$OUT/test1.png" --top 2
echo "main job done: $OUT/model.onnx, $OUT/model.report.json, $OUT/latency.json, $OUT/latency.png, $OUT/triton/"
