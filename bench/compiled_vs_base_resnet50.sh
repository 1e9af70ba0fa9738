#!/usr/bin/env bash
# ResNet-50 @224, ONNX Runtime CPU: latency of the base alone vs the compiled graph with 1, 2 and 4
# tasks on blocks 13-14 (synthetic tasks whose weights differ from the base's), side by side in
# one run, plus the wall time of compiling 4 tasks. Results in ${OUT:-runs/bench-resnet50}/.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT=${OUT:-runs/bench-resnet50}
mkdir -p "$OUT"
subtune base --arch torchvision:resnet50 --seed 0 -o "$OUT/base.pt"
for i in 1 2 3 4; do
  subtune synthetic-task "$OUT/base.pt" --blocks 13-14 --name "task$i" --seed "$i" -o "$OUT/task$i.pt"
done
start=$(date +%s.%N)
subtune-compile "$OUT/base.pt" "$OUT"/task{1,2,3,4}.pt -o "$OUT/model4.onnx"
end=$(date +%s.%N)
python3 -c "import json,sys; json.dump({'compile_seconds_4_tasks': round($end - $start, 1)}, open('$OUT/compile_time.json', 'w'))"
echo "compile time, 4 tasks: $(python3 -c "print(round($end - $start, 1))") s (includes verification at batch 1 and 5)"
subtune-bench --compare "$OUT/base.pt" "$OUT"/task{1,2,3,4}.pt --task-counts 1,2,4 --batch 1 \
  ${BENCH_ARGS:-} --json "$OUT/compare.json" --plot "$OUT/compare.png" | tee "$OUT/compare.txt"
