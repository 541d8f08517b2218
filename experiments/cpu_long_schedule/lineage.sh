#!/bin/bash
# The shipped Lite0 recipe (MODEL_CARD.md) with 2.5x the epochs (30 + 10 + 8), seed 0 (the committed split).
# Run from anywhere: bash experiments/cpu_long_schedule/lineage.sh > log.txt. Each stage resumes from its last.pt.
# SEED=1 bash ...: another training seed on the same split (--seed 1 --split-seed 0), into runs/lite0_long_s1_*.
# SCHEDULE=shipped: the first lineage's 12 + 5 + 4 epochs instead, into runs/lite0_plain${SEED:+_s$SEED}_*.
cd "$(dirname "$0")/../.."  # the repository root
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PY=${PY:-.venv/bin/python}
if [ "$SCHEDULE" = shipped ]; then R=runs/lite0_plain${SEED:+_s$SEED}; E=(12 5 4); else R=runs/lite0_long${SEED:+_s$SEED}; E=(30 10 8); fi
COMMON="--data ../shared/data/trashnet --model efficientnet_lite0${SEED:+ --seed $SEED --split-seed 0}"
TAIL="--weight-decay 0.02 --mix-prob 0 --min-scale 0.5 --ema-decay 0.99 --balance loss --patience 0 --threads 2 --batch-size 32"
stage() {  # out, args...
  out=$1; shift
  [ -f $out/metrics.json ] && { echo "$out done"; return 0; }
  if [ -f $out/last.pt ]; then $PY train/train.py "$@" --out $out --resume; else $PY train/train.py "$@" --out $out; fi
}
stage ${R}_192 $COMMON --weights imagenet --input-size 192 --epochs ${E[0]} --freeze-epochs 1 --warmup-epochs 1 --lr 1e-3 --backbone-lr-factor 0.5 $TAIL || exit 1
stage ${R}_224 $COMMON --input-size 224 --epochs ${E[1]} --freeze-epochs 0 --warmup-epochs 0 --lr 3e-4 --backbone-lr-factor 0.5 $TAIL --init-from ${R}_192/best.pt || exit 1
stage ${R}_224_bgft $COMMON --input-size 224 --epochs ${E[2]} --freeze-epochs 0 --warmup-epochs 0 --lr 1e-4 --backbone-lr-factor 0.5 --background 0.3 --blur 0.1 --jpeg 0.2 $TAIL --init-from ${R}_224/best.pt || exit 1
echo "lineage done $(date)"
