#!/usr/bin/env bash
# The inference install without torch: build the wheel, install it with no extras into a fresh
# venv, and run predict, evaluate, slide and the service there on real patches with the bundled
# int8 model. Fails if torch is importable there or if any step fails. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
DATA=${DATA:-../shared/data/pcam-real}
WORK=$(mktemp -d)
trap 'kill "${SERVER:-0}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

$PYTHON -m venv "$WORK/venv"
B=$WORK/venv/bin
"$B/python" -m pip install -q --upgrade pip
.venv/bin/python -m pip wheel -q --no-deps -w "$WORK/wheel" .
"$B/python" -m pip install -q "$WORK"/wheel/histoscan-*.whl
if "$B/python" -c "import torch" 2>/dev/null; then
  echo "torch-free check: the base install pulled torch" >&2
  exit 1
fi
echo "torch-free install: $(du -sh "$WORK/venv" | cut -f1) venv, no torch"

"$B/histoscan" predict "$DATA/test" --out "$WORK/submission.csv" --quiet
test "$(wc -l < "$WORK/submission.csv")" -eq "$(wc -l < "$DATA/sample_submission.csv")"

"$B/histoscan" evaluate "$DATA/train" --subset val --tta none --out "$WORK/eval" --quiet
"$B/python" - "$WORK/eval/metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
assert m["inference"]["engine"] == "onnx-int8", m["inference"]
assert m["calibrated"]["roc_auc"] > 0.95, m["calibrated"]["roc_auc"]
print(f"evaluate without torch: ROC AUC {m['calibrated']['roc_auc']:.4f} on {m['n_evaluated']}")
EOF

# a small slide: 6 x 6 real patches at the model's resolution, as a tiled TIFF
"$B/python" - "$DATA/train" "$WORK/slide.tif" <<'EOF'
import sys
from pathlib import Path
import numpy as np
import tifffile
from histoscan.data.sources import open_source
source = open_source(Path(sys.argv[1]))
patches = source.read_many(range(36))
mosaic = patches.reshape(6, 6, 96, 96, 3).transpose(0, 2, 1, 3, 4).reshape(576, 576, 3)
per_cm = 1e4 / 0.972
tifffile.imwrite(sys.argv[2], mosaic, photometric="rgb", tile=(128, 128),
                 resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
EOF
"$B/histoscan" slide "$WORK/slide.tif" --out "$WORK/slide" --quiet
test -s "$WORK/slide/tiles.csv" && test -s "$WORK/slide/summary.json"

PORT=$(( 20000 + RANDOM % 20000 ))
"$B/histoscan" serve --port "$PORT" > "$WORK/serve.log" 2>&1 &
SERVER=$!
"$B/python" - "$PORT" "$DATA/test" <<'EOF'
import sys, time
from pathlib import Path
import httpx
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(120):
    try:
        if httpx.get(f"{base}/healthz").status_code == 200:
            break
    except httpx.TransportError:
        time.sleep(0.5)
patch = next(Path(sys.argv[2]).glob("*.webp"))
reply = httpx.post(f"{base}/v1/predict", files=[("files", (patch.name, patch.read_bytes()))])
assert reply.status_code == 200 and "p_tumor" in reply.text, reply.text
print(f"serve without torch: p_tumor {reply.json()['results'][0]['p_tumor']:.4f}")
EOF
echo "torch-free check: predict, evaluate, slide and serve ran without torch"
