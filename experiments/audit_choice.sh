#!/usr/bin/env bash
# What the audit's default should be, measured: errors planted between Fashion-MNIST's confusable
# classes (--noise-kind=asymmetric: T-shirt <-> Shirt, Pullover <-> Coat, Sandal -> Sneaker ->
# Ankle boot), flags scored against them, time measured. Resumable: rerun to continue.
#
#   OUT=docs/results/audit_choice bash experiments/audit_choice.sh
#
# All 60,000 training images, one in-sample model (the audit with --detector=pt) per loss: F1 and
# seconds per epoch (metrics.jsonl), the whole audit timed, peak memory; then the audit at its
# defaults, timed. The 3,000-image seed map
# (docs/results/seeds) holds the same comparison against 5-fold Confident Learning over 3 seeds.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-audit_choice_out}
PY=${PYTHON:-python3}
NOISE=(--noise-kind=asymmetric --noise-rate=0.2 --seed=0)
mkdir -p "$OUT"

audit60k() {  # name, flags...
  local name=$1; shift
  [ -f "$OUT/60k_$name/summary.json" ] && return
  rm -rf "$OUT/60k_$name"
  /usr/bin/time -f "%e s wall, %M KB peak" -o "$OUT/60k_$name.time" \
    $PY -m robust_losses_jax find-errors --dataset=fashion_mnist --no-progress "${NOISE[@]}" \
    --workdir="$OUT/60k_$name" "$@" > "$OUT/60k_$name.log" 2>&1
}

audit60k gce_e12 --detector=pt --loss=gce --epochs=12
audit60k default  # The audit's defaults (gce, 10 epochs), timed end to end.
audit60k cutoff_e12 --detector=pt --loss=cutoff --tau=0.1 --epochs=12
