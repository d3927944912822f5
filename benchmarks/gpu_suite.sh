#!/usr/bin/env bash
# The GPU measurements of the speed issue in one call of under 10 minutes (a lent GPU machine has
# 15 minutes of device time). Needs .bench_data/fmnist.npz (images/labels, the first
# 11,000 Fashion-MNIST training examples; make it here with `make bench-data`) carried along, and
# writes each benchmark's output to $OUT (default: bench_out/). Usage, from the repository root:
#   OUT=/some/dir bash benchmarks/gpu_suite.sh
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-bench_out}
NPZ=.bench_data/fmnist.npz
mkdir -p "$OUT"
PY=${PYTHON:-python3}
step() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "   exit $? ($(grep -c . "$OUT/$name.txt") lines)"; grep -E "^ratio|round|medians" "$OUT/$name.txt"
}
{ $PY -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())"
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# 1. The 5-fold protocol, stacked vs sequential, cold and warm (one round took ~150 s on an
# H200; two did not fit in 200 s).
step kfold20 200 $PY -m benchmarks.bench_kfold --npz=$NPZ --epochs=20 --warm
# 2. ResNet-18, bfloat16, batch 512: examples/s and fraction of peak.
step resnet18_bf16_b512 120 $PY -m benchmarks.bench_train --models=resnet18 --dtype=bfloat16 \
  --no-stream --batch-size=512 --steps=40
# 3. The 5-fold protocol with a checkpoint per epoch and model (--checkpoint-min-interval=0; the
# runner's default saves at most once a minute): what the per-model costs add.
step kfold20_ckpt_every 150 $PY -m benchmarks.bench_kfold --npz=$NPZ --epochs=20 --warm \
  --checkpoint-min-interval=0 --no-torch
# 4. The whole label audit of all 60,000 Fashion-MNIST images with confusable-class errors
# planted: the default (one gce model, its epochs), 5-fold CL, and torch + cleanlab where torch
# is installed. The goal for the default row is under 60 s (needs .bench_data/fmnist60k.npz,
# `make bench-data`).
[ -f .bench_data/fmnist60k.npz ] && step audit60k 240 $PY -m benchmarks.bench_audit \
  --npz=.bench_data/fmnist60k.npz --train-size=0
# 5. A sweep of 6 CL cells (3 losses x 2 seeds, 5 folds each) with and without cross-cell stacks.
$PY - <<'PY'
import numpy as np
with np.load(".bench_data/fmnist.npz") as f:
    images, labels = f["images"], f["labels"]
np.savez("/tmp/fmnist_runner.npz", train_images=images[:10000], train_labels=labels[:10000],
         test_images=images[10000:], test_labels=labels[10000:], num_classes=10)
PY
GRID=(--losses="${SWEEP_LOSSES:-ce;power:gamma=0.5;power:gamma=2}" --delays=1
      --noise=symmetric:0.2 --detectors=cl --seeds=${SWEEP_SEEDS:-0,1} --no-progress)
RUN=(--dataset=npz:/tmp/fmnist_runner.npz --epochs=${SWEEP_EPOCHS:-10} --train-size=0
     --compilation-cache=)
for mode in stack no-stack; do
  flag=$([ $mode = stack ] && echo --stack || echo --no-stack)
  start=$(date +%s%N)
  timeout 150 $PY -m experiments.sweep "${GRID[@]}" $flag --workdir=/tmp/sweep_$mode -- "${RUN[@]}" \
    > "$OUT/sweep_$mode.txt" 2>&1
  code=$?
  echo "sweep $mode: exit $code, $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a "$OUT/sweep_times.txt"
done
