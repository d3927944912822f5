#!/usr/bin/env bash
# Clean and retrain on Fashion-MNIST with errors planted between confusable classes, 3 seeds:
# test accuracy of cross-entropy and gce on the noisy labels and on the cleaned set (the default
# audit's flags dropped), on the clean test split. Each seed: one audit, four trainings.
#   OUT=docs/results/retrain bash experiments/retrain_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-workdir/retrain}
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-"0 1 2"}
SIZE=${SIZE:-6000}
mkdir -p "$OUT"
for seed in $SEEDS; do
  "$PYTHON" -m robust_losses_jax find-errors --dataset=fashion_mnist --train-size="$SIZE" \
    --noise-kind=asymmetric --noise-rate=0.2 --seed="$seed" --retrain --retrain-loss=ce,gce \
    --no-progress --workdir="$OUT/seed$seed" --resume > "$OUT/seed$seed.log"
done
"$PYTHON" - "$OUT"/seed*/summary.json <<'PY' | tee "$OUT/table.md"
import json, sys
from robust_losses_jax import retrain
print(retrain.retrain_table([json.load(open(p)) for p in sys.argv[1:]]), end="")
PY
