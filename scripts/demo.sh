#!/usr/bin/env bash
# `make demo [DATA=dir]`: the whole pipeline that exists so far, on real data when DATA is an
# ImageFolder dataset, otherwise on a freshly generated SYNTHETIC one (said loudly).
#   1. train a small model for a few epochs (a demo, not the shipped model)
#   2. export it to ONNX and verify it against PyTorch on held-out images
#   3. evaluate the committed, fully trained model(s) under models/ on the same data
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

banner "1/3 train (demo: SimpleCNN, 96 px, $EPOCHS epochs)"
$PY train/train.py --data "$DATA" --out "$OUT/run" --model simplecnn --input-size 96 --base-features 32 \
  --kernel-size 3 --epochs "$EPOCHS" --batch-size 32 --warmup-epochs 1

banner "2/3 export to ONNX and verify against PyTorch"
$PY train/export.py --run "$OUT/run" --out "$OUT/demo_model.onnx"

banner "3/3 the committed trained model(s) on this data"
[ "$DATA" = "$OUT/synthetic" ] && echo "(synthetic shapes are not TrashNet photos: expect a low score here; DATA=... for a real check)"
shopt -s nullglob
for model in models/*.onnx; do
  $PY train/evaluate.py --model "$model" --data "$DATA" --json "$OUT/$(basename "$model" .onnx).eval.json"
done

banner "done: run folder $OUT/run (metrics.json, confusion_test.png, curves.png), model $OUT/demo_model.onnx"
