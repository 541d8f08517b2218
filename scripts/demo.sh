#!/usr/bin/env bash
# `make demo [DATA=dir]`: the whole pipeline that exists so far, on real data when DATA is an
# ImageFolder dataset, otherwise on a freshly generated SYNTHETIC one (said loudly).
#   1. train a small model for a few epochs (a demo, not the shipped model)
#   2. export it to ONNX and verify it against PyTorch on held-out images
#   3. evaluate the committed, fully trained model(s) under models/ on the same data
#   4. serve model_repository/ with the real tritonserver (free loopback ports) and classify
#      with client/classify.py over HTTP and gRPC: the real DATA, or without it the committed
#      sample photos (samples/, TrashNet test-split photos the model never trained on)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=demo_out
DATA=${1:-}
EPOCHS=${DEMO_EPOCHS:-4}
rm -rf "$OUT"; mkdir -p "$OUT"

banner() { printf '\n==================== %s ====================\n' "$*"; }

if [ -n "$DATA" ]; then
  [ -d "$DATA" ] || { echo "DATA=$DATA is not a folder" >&2; exit 2; }
  banner "REAL DATA: $DATA"
else
  DATA=$OUT/synthetic
  banner "NO DATA GIVEN: USING A SYNTHETIC DATASET (pass DATA=dir for real photos)"
  $PY -m wastesort.synthetic "$DATA" --per-class 50
fi

banner "1/4 train (demo: SimpleCNN, 96 px, $EPOCHS epochs)"
$PY train/train.py --data "$DATA" --out "$OUT/run" --model simplecnn --input-size 96 --base-features 32 \
  --kernel-size 3 --epochs "$EPOCHS" --batch-size 32 --warmup-epochs 1

banner "2/4 export to ONNX and verify against PyTorch"
$PY train/export.py --run "$OUT/run" --out "$OUT/demo_model.onnx"

banner "3/4 the committed trained model(s) on this data"
[ "$DATA" = "$OUT/synthetic" ] && echo "(synthetic shapes are not TrashNet photos: expect a low score here; DATA=... for a real check)"
shopt -s nullglob
for model in models/*.onnx; do
  $PY train/evaluate.py --model "$model" --data "$DATA" --json "$OUT/$(basename "$model" .onnx).eval.json"
done

SERVE_DATA=$DATA
[ "$DATA" = "$OUT/synthetic" ] && SERVE_DATA=samples
banner "4/4 serve model_repository/ on tritonserver and classify $SERVE_DATA with client/classify.py"
read -r HTTP GRPC METRICS < <($PY -c 'from wastesort.triton.server import free_port as f; print(f(), f(), f())')
TRITON_HTTP_PORT=$HTTP TRITON_GRPC_PORT=$GRPC TRITON_METRICS_PORT=$METRICS $PY -m wastesort.triton.server > "$OUT/tritonserver.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null' EXIT
$PY -m wastesort.triton.server --wait-ready --http-port "$HTTP" --pid "$SERVER_PID" || { tail -n 30 "$OUT/tritonserver.log"; exit 1; }
$PY client/classify.py "$SERVE_DATA" --url "127.0.0.1:$HTTP" --batch-size 16 --concurrency 4 --json > "$OUT/served_http.jsonl"
$PY client/classify.py "$SERVE_DATA" --url "127.0.0.1:$GRPC" --protocol grpc --top-k 3 --batch-size 16 --concurrency 4 > "$OUT/served_grpc.txt"
if [ "$SERVE_DATA" = samples ]; then
  cat "$OUT/served_grpc.txt"   # each file's folder is its true class
else
  head -n 5 "$OUT/served_grpc.txt"
fi
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
trap - EXIT

banner "done: run $OUT/run (metrics.json, confusion_test.png, curves.png), model $OUT/demo_model.onnx, served labels $OUT/served_*"
