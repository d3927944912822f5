#!/usr/bin/env bash
# The evidence grid (docs/results/README.md) in one call with a time budget: every step is a
# resumable sweep into one workdir, run in order of interest while time is left, and the tables
# (results.csv/md, verdict.md/json) and plots are written to $OUT at the end, whatever finished.
#
#   OUT=/some/dir BUDGET=520 bash experiments/evidence_grid.sh           # the grid (a GPU)
#   OUT=/tmp/ev GRID=tiny BUDGET=300 bash experiments/evidence_grid.sh   # a tiny grid (CPU test)
#
# Data: Fashion-MNIST through tfds, prepared offline from the IDX files in $FASHION_MNIST_DIR
# (default: Debian's /usr/share/datasets/fashion-mnist; carry them to a machine without them).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-evidence_out}
GRID=${GRID:-full}
BUDGET=${BUDGET:-520}  # Seconds for all the sweeps together.
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/evidence_work}
mkdir -p "$OUT" "$WORK"
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

sweep() {  # name, workdir, sweep flags... -- run flags...
  local name=$1 dir=$2; shift 2
  local limit; limit=$(left)
  if [ "$limit" -le 20 ]; then echo "== $name: skipped (no time left)"; return; fi
  echo "== $name (up to ${limit}s)"
  timeout "$limit" $PY -m experiments.sweep --workdir="$dir" --no-progress "$@" \
    >> "$OUT/sweep_log.txt" 2>&1
  echo "   exit $? after $(( $(date +%s) - START ))s"
}

if [ "$GRID" = tiny ]; then
  R1=(-- --train-size=256 --epochs=2 --batch-size=64 --test-size=256 --model=mlp)
  sweep pt "$WORK/regime1" --losses="ce;cutoff:tau=0.1" --noise=symmetric:0.2 --detectors=pt \
    --delays=1 --seeds=0,1 "${R1[@]}"
  sweep cl "$WORK/regime1" --losses="ce" --noise=symmetric:0.2 --detectors=cl --delays=1 \
    --seeds=0,1 "${R1[@]}" --folds=2
else
  R1=(--)  # The runner's defaults: 10,000 examples, Adam 1e-3, batch 128, 20 epochs.
  ALL="ce;focal:gamma=2;gce;sce;nce_rce;power:gamma=0.5;power:gamma=1;power:gamma=2"
  ALL="$ALL;cutoff:tau=0.05;cutoff:tau=0.1;cutoff:tau=0.2;cutoff:tau=auto"
  NOISE=symmetric:0.2,symmetric:0.4,asymmetric:0.2
  sweep pt "$WORK/regime1" --losses="$ALL" --noise=$NOISE --detectors=pt --delays=default \
    --seeds=0,1,2 "${R1[@]}"
  sweep cl_key "$WORK/regime1" --losses="ce;power:gamma=0.5;cutoff:tau=0.1" --noise=$NOISE \
    --detectors=cl --delays=default --seeds=0,1,2 "${R1[@]}"
  sweep aum "$WORK/regime1" --losses="ce;power:gamma=0.5;cutoff:tau=0.1" \
    --noise=symmetric:0.2 --detectors=aum --delays=default --seeds=0,1,2 "${R1[@]}"
  sweep cl_all "$WORK/regime1" --losses="$ALL" --noise=$NOISE --detectors=cl \
    --delays=default --seeds=0,1,2 "${R1[@]}"
  sweep paper "$WORK/paper" --losses="ce;power:gamma=0.5;power:gamma=2;cutoff:tau=0.1" \
    --noise=symmetric:0.2 --detectors=cl --delays=default --seeds=0,1,2 -- --preset=paper
fi

for dir in "$WORK"/*/; do
  name=$(basename "$dir")
  [ -f "$dir/results.csv" ] || continue
  $PY -m experiments.evidence "$dir" > /dev/null 2>> "$OUT/sweep_log.txt"
  for f in results.csv results.md verdict.md; do
    [ -f "$dir/$f" ] && cp "$dir/$f" "$OUT/${name}_$f"
  done
done
echo "done after $(( $(date +%s) - START ))s; tables in $OUT"
