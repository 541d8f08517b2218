#!/bin/bash
# GPU seed study of the shipped Lite0 recipe (exploratory; run by the device tool from the repo root).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:.devdata/site:src PYTHONUNBUFFERED=1 TQDM_DISABLE=1
DATA=.devdata/half
COMMON="--model efficientnet_lite0 --weight-decay 0.02 --mix-prob 0 --min-scale 0.5 --ema-decay 0.99 --balance loss --patience 0 --threads 3 --batch-size 32 --data $DATA"
prep() {  # a run folder that reads the committed split (resume without last.pt)
  mkdir -p $1; cp models/efficientnet_lite0.manifest.csv $1/manifest.csv
  echo '{"classes": ["cardboard", "glass", "metal", "paper", "plastic", "trash"]}' > $1/config.json
}
lineage() {  # seed, epochs at 192, epochs at 224, epochs with backgrounds
  s=$1; a=runs/s${s}_a; b=runs/s${s}_b; c=runs/s${s}_c
  prep $a; python3 train/train.py $COMMON --seed $s --resume --out $a --weights imagenet --input-size 192 --epochs $2 --freeze-epochs 1 --warmup-epochs 1 --lr 1e-3 --backbone-lr-factor 0.5 || return
  prep $b; python3 train/train.py $COMMON --seed $s --resume --out $b --input-size 224 --epochs $3 --freeze-epochs 0 --warmup-epochs 0 --lr 3e-4 --backbone-lr-factor 0.5 --init-from $a/best.pt || return
  prep $c; python3 train/train.py $COMMON --seed $s --resume --out $c --input-size 224 --epochs $4 --freeze-epochs 0 --warmup-epochs 0 --lr 1e-4 --backbone-lr-factor 0.5 --background 0.3 --blur 0.1 --jpeg 0.2 --init-from $b/best.pt
}
start=$(date +%s)
lineage 0 12 5 4 > $OUT/log_s0.txt 2>&1 &
lineage 1 12 5 4 > $OUT/log_s1.txt 2>&1 &
lineage 2 12 5 4 > $OUT/log_s2.txt 2>&1 &
lineage 7 30 10 8 > $OUT/log_s7.txt 2>&1 &
wait
echo "all done in $(( $(date +%s) - start )) s"
for s in 0 1 2 7; do
  grep -h -E "^(epoch|stage|test|val|best|time)" $OUT/log_s$s.txt | tail -5
  cp runs/s${s}_c/best.pt $OUT/s${s}_c.pt 2>/dev/null
  for st in a b c; do cp runs/s${s}_$st/metrics.json $OUT/metrics_s${s}_$st.json 2>/dev/null; done
done
cd $OUT && tar czf logs.tgz log_s*.txt metrics_*.json && rm -f log_s*.txt metrics_*.json
ls -la $OUT
