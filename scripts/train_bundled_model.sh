#!/usr/bin/env bash
# How the bundled model (src/histoscan/weights/histocnn-pcam.pt) is made, on a 2-core CPU:
# two histocnn members side by side (one thread each, 37-minute budget, different seeds, one
# shared stratified validation split of 1,000 patches), averaged into one calibrated ensemble,
# then a static int8 ONNX copy for fast CPU inference.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/pcam-real/train}
RUNS=${RUNS:-runs}
HS=.venv/bin/histoscan
export LD_PRELOAD=${LD_PRELOAD:-/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4}
for seed in 1 2; do
  $HS train "$DATA" --config configs/cpu-small.yaml --seed $seed --out "$RUNS/member$seed" \
    --quiet > "$RUNS/member$seed.log" 2>&1 &
done
wait
W=src/histoscan/weights
$HS ensemble "$RUNS/member1/model.pt" "$RUNS/member2/model.pt" --data "$DATA" \
  --out $W/histocnn-pcam.pt --name histocnn-pcam \
  --command "scripts/train_bundled_model.sh (2 x histoscan train $DATA --config configs/cpu-small.yaml --seed {1,2}; histoscan ensemble)"
$HS export-onnx -m $W/histocnn-pcam.pt --int8 --calibration "$DATA" -o $W/histocnn-pcam.int8.onnx
$HS card -m $W/histocnn-pcam.pt > $W/MODEL_CARD.md
