"""The small CNN's train step on CPU: flax's layers against ``models.layers``, YNNPACK on and off.

Times one jitted Adam step (forward, backward, update) of the paper's small CNN on a 28x28x1
batch, median of repeats, for four variants, each in its own process because ``XLA_FLAGS`` is read
once per process:

- ``flax`` layers (``nn.Conv``, ``nn.max_pool``, ``nn.Dropout``) or this project's
  (``layers.Conv`` with the matmul kernel gradient, ``max_pool_2x2``, hashed ``Dropout``);
- XLA's default flags, or with ``xla_setup.configure_cpu()`` (YNNPACK fusions off).

Ends with ``ratio <name>: <x.xx>`` lines (> 1: the project's set-up is faster).

    python -m benchmarks.bench_layers            # batch 128, 15 repeats
    python -m benchmarks.bench_layers --quick    # batch 128, 5 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _time_step(layers_kind: str, batch: int, repeats: int) -> dict:
    import time

    import flax.linen as nn
    import jax
    import numpy as np
    import optax

    from robust_losses_jax.models import SmallCNN

    class FlaxSmallCNN(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            x = nn.relu(nn.Conv(32, (3, 3), padding="VALID")(x))
            x = nn.relu(nn.Conv(64, (3, 3), padding="VALID")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = nn.Dropout(0.25, deterministic=not train)(x)
            x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
            x = nn.Dropout(0.5, deterministic=not train)(x)
            return nn.Dense(10)(x)

    model = FlaxSmallCNN() if layers_kind == "flax" else SmallCNN(num_classes=10)
    x = jax.random.normal(jax.random.key(0), (batch, 28, 28, 1))
    y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
    params = model.init(jax.random.key(2), x[:1], train=False)["params"]
    tx = optax.adam(1e-3)

    @jax.jit
    def step(params, opt_state, key):
        def loss(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    started = time.perf_counter()
    params, opt_state = jax.block_until_ready(step(params, opt_state, jax.random.key(3)))
    compile_s = time.perf_counter() - started
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        params, opt_state = jax.block_until_ready(step(params, opt_state, jax.random.key(i)))
        times.append(time.perf_counter() - started)
    return {"median_ms": 1000 * float(np.median(times)), "compile_s": compile_s,
            "jax": jax.__version__}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 15)
    if args.child:
        print(json.dumps(_time_step(args.child, args.batch, repeats)))
        return

    from robust_losses_jax import xla_setup

    results = {}
    for flags in ("default", "configured"):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("XLA_FLAGS", None)
        if flags == "configured":
            xla_setup.configure_cpu(environ=env)
        for layers_kind in ("flax", "project"):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_layers", "--child", layers_kind,
                 "--batch", str(args.batch), "--repeats", str(repeats)],
                env=env, check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            results[(flags, layers_kind)] = json.loads(out.strip().splitlines()[-1])
    jax_version = next(iter(results.values()))["jax"]
    print(f"small CNN Adam step, batch {args.batch}, 28x28x1, cpu, jax {jax_version}; "
          f"median of {repeats}")  # fmt: skip
    print(f"{'XLA flags':12s} {'layers':8s} {'median ms':>10s} {'compile s':>10s}")
    for (flags, layers_kind), r in results.items():
        print(f"{flags:12s} {layers_kind:8s} {r['median_ms']:10.1f} {r['compile_s']:10.2f}")
    base = results[("default", "flax")]["median_ms"]
    for key, name in [
        (("configured", "flax"), "ynn_off/default (flax layers)"),
        (("default", "project"), "project_layers/flax_layers (default flags)"),
        (("configured", "project"), "configured+project/default+flax"),
    ]:
        print(f"ratio {name}: {base / results[key]['median_ms']:.2f}")


if __name__ == "__main__":
    main()
