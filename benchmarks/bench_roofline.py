"""Where the small CNN's training step goes on this machine: arithmetic at peak rate vs the rest.

The CPU goals of the speed issue (the 5-fold protocol 2x faster than the PyTorch reference) are
bounded by how fast the step's arithmetic can run. In one process this measures:

- ``matmul``: a 2048^3 float32 matrix product, the rate XLA:CPU's library kernels reach here
  (the machine's practical peak);
- ``conv 32->64 fwd+grads``: the small CNN's second convolution (86% of the step's FLOPs) with
  both gradients, as the project computes them (``models.layers``), inside a ``lax.scan``;
- ``train step``: the project's whole small-CNN step (Adam, batch 128, dropout), as the epoch
  program runs it (``bench_train.time_jax_device``: a ``lax.scan`` over an epoch);
- ``torch step``: the PyTorch reference's eager step, when torch is installed.

FLOPs are those the step needs, counted from the layers' shapes (:func:`step_flops`); the
*floor* is those FLOPs at the best rate measured here (the matmul's or the convolution
block's). The step can be no faster than its floor unless it does less arithmetic (e.g.
Winograd convolutions).

    python -m benchmarks.bench_roofline            # 7 repeats
    python -m benchmarks.bench_roofline --quick    # 3 repeats
    .venv-bench/bin/python -m benchmarks.bench_roofline   # with the torch row

Ends with ``ratio <name>: <x.xx>`` lines (> 1: this project's step is faster than the other).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks import bench_train
from robust_losses_jax import xla_setup
from robust_losses_jax.models import layers
from robust_losses_jax.training import parallel

BATCH = 128


def _median_seconds(fn, *args, repeats: int) -> float:
    """Median wall seconds of ``fn(*args)`` (blocked on), after one untimed call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_matmul(size: int, repeats: int) -> tuple[float, float]:
    """``(seconds, flops)`` of a ``size``^3 float32 matrix product."""
    a = jax.random.normal(jax.random.key(0), (size, size))
    b = jax.random.normal(jax.random.key(1), (size, size))
    return _median_seconds(jax.jit(jnp.matmul), a, b, repeats=repeats), 2.0 * size**3


def time_conv_block(repeats: int, loops: int = 5) -> tuple[float, float]:
    """``(seconds, flops)`` of the 32->64 convolution's forward pass and both gradients, per step.

    Run ``loops`` times inside a ``lax.scan``, each iteration depending on the last (XLA may
    not hoist it), as in the epoch program.
    """
    x = jax.random.normal(jax.random.key(0), (BATCH, 26, 26, 32))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 32, 64)) * 0.05
    out_grad = jax.random.normal(jax.random.key(2), (BATCH, 24, 24, 64))

    def body(carry, _):
        x, kernel = carry
        _, vjp = jax.vjp(layers.conv2d, x, kernel)
        x_grad, kernel_grad = vjp(out_grad)
        return (x + 1e-6 * x_grad, kernel + 1e-6 * kernel_grad), None

    run = jax.jit(lambda x, k: jax.lax.scan(body, (x, k), None, length=loops)[0])
    flops = 3 * 2.0 * BATCH * 24 * 24 * 64 * 3 * 3 * 32  # forward, input and kernel gradients
    return _median_seconds(run, x, kernel, repeats=repeats) / loops, flops


def step_flops(batch: int = BATCH) -> float:
    """FLOPs of the arithmetic one small-CNN training step needs (2 x multiply-adds).

    Each layer's forward pass, kernel gradient and input gradient (none for the first layer,
    whose input is the data): conv 3x3 1->32 (28 -> 26), conv 3x3 32->64 (26 -> 24), dense
    9216 -> 128, dense 128 -> 10. Counted from the shapes: the jaxpr of the step also holds
    work XLA removes (the primal half of a ``jax.vjp`` whose output is unused), and XLA:CPU's
    cost analysis counts padded convolutions low.
    """
    conv1 = 2.0 * batch * 26 * 26 * 32 * 9 * 1
    conv2 = 2.0 * batch * 24 * 24 * 64 * 9 * 32
    dense = 2.0 * batch * 9216 * 128
    head = 2.0 * batch * 128 * 10
    return 2 * conv1 + 3 * (conv2 + dense + head)


def main(argv: list[str] | None = None) -> None:
    xla_setup.configure_cpu()  # Before JAX starts its backends.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    steps = 20 if args.quick else 40
    images, labels = bench_train.synthetic_split(BATCH * steps, 28, 1)
    mesh = parallel.data_mesh(jax.local_devices()[:1])

    rows: dict[str, tuple[float, float]] = {}
    rows["matmul 2048^3"] = time_matmul(2048, repeats)
    rows["conv 32->64 fwd+grads"] = time_conv_block(repeats)
    epoch_seconds, _ = bench_train.time_jax_device(
        "small_cnn", images, labels, batch=BATCH, repeats=repeats, dtype="float32", mesh=mesh
    )
    flops = step_flops()
    rows["train step"] = (epoch_seconds / steps, flops)
    torch = bench_train.time_torch(
        "small_cnn", batch=BATCH, steps=steps, repeats=repeats, image_size=28, channels=1
    )
    if torch is not None:
        rows["torch step"] = (torch[0] / steps, flops)

    peak = max(row_flops / seconds for name, (seconds, row_flops) in rows.items()
               if name in ("matmul 2048^3", "conv 32->64 fwd+grads"))  # fmt: skip
    backend = f"{jax.default_backend()}, {jax.device_count()} device(s), jax {jax.__version__}"
    print(f"small CNN train step, batch {BATCH}, 28x28x1; {backend}; median of {repeats}")
    print(f"{'row':24s} {'ms':>9s} {'GFLOP':>8s} {'GFLOP/s':>9s} {'of best':>8s}")
    for name, (seconds, row_flops) in rows.items():
        rate = row_flops / seconds
        print(f"{name:24s} {1e3 * seconds:9.2f} {row_flops / 1e9:8.3f} {rate / 1e9:9.1f} "
              f"{rate / peak:8.0%}")  # fmt: skip
    step = rows["train step"][0]
    floor = flops / peak
    conv = rows["conv 32->64 fwd+grads"][0]
    print(f"floor (the step's {flops / 1e9:.2f} GFLOP at the best rate): {1e3 * floor:.1f} ms")
    rest = 1e3 * (step - conv)
    print(f"the 32->64 convolution block: {1e3 * conv:.1f} ms; everything else in the step "
          f"(other layers, pooling, dropout, loss, Adam): {rest:.1f} ms")  # fmt: skip
    if torch is not None:
        print(f"a step 2x faster than torch's: {1e3 * rows['torch step'][0] / 2:.1f} ms")
    print(f"ratio train step vs its arithmetic floor: {floor / step:.2f}")
    if torch is not None:
        print(f"ratio train step vs torch step: {rows['torch step'][0] / step:.2f}")


if __name__ == "__main__":
    main()
