"""Overhead of each loss against optax's cross-entropy.

Times ``jit(value_and_grad(mean loss))`` on logits ``[batch, classes]`` (default
``[4096, 100]``) for every loss in the registry, interleaved round by round so machine noise
hits all of them alike, and prints the median time per call and the ratio to optax's
cross-entropy (lower is cheaper; 1.00 means no overhead). Ends with one line per loss:
``ratio <loss>/ce: <x.xx>``.

    python -m benchmarks.loss_overhead            # full: 21 rounds x 200 calls
    python -m benchmarks.loss_overhead --quick    # same table, under a minute
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robust_losses_jax import losses

# (row name, loss name, hyperparameters). The first row is the reference.
CASES = [
    ("ce", None, {}),
    ("cross_entropy", "cross_entropy", {}),
    ("power", "power", {"gamma": 2.0}),
    ("power_tau", "power", {"gamma": 2.0, "tau": 0.1}),
    ("power_undetached", "power", {"gamma": 2.0, "detach": False}),
    ("cutoff", "cutoff", {"tau": 0.1}),
    ("focal", "focal", {"gamma": 2.0}),
    ("gce", "gce", {}),
    ("sce", "sce", {}),
    ("mae", "mae", {}),
    ("nce_rce", "nce_rce", {}),
    ("nce_mae", "nce_mae", {}),
    ("anl_ce", "anl_ce", {}),
    ("poly1", "poly1", {}),
]


def make_step(loss_name, hparams):
    if loss_name is None:
        fn = optax.losses.softmax_cross_entropy_with_integer_labels
    else:
        fn = losses.get_loss(loss_name, **hparams)
    return jax.jit(jax.value_and_grad(lambda logits, labels: jnp.mean(fn(logits, labels))))


def time_calls(step, logits, labels, calls):
    start = time.perf_counter()
    for _ in range(calls):
        out = step(logits, labels)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (7 if args.quick else 21)
    calls = 50 if args.quick else 200

    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(args.batch, args.classes)) * 3, jnp.float32)
    labels = jnp.asarray(rng.integers(0, args.classes, args.batch), jnp.int32)
    steps = {name: make_step(loss, hp) for name, loss, hp in CASES}
    for step in steps.values():  # Compile and warm up outside the timings.
        jax.block_until_ready(step(logits, labels))

    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(time_calls(step, logits, labels, calls))

    medians = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"jit(value_and_grad(mean loss)), logits [{args.batch}, {args.classes}] float32, "
        f"{jax.devices()[0].platform}, jax {jax.__version__}; "
        f"median of {rounds} rounds x {calls} calls"
    )
    print(f"{'loss':<18}{'median ms':>10}{'ratio/ce':>10}")
    for name, median in medians.items():
        print(f"{name:<18}{median * 1e3:>10.3f}{median / medians['ce']:>10.2f}")
    for name, median in medians.items():
        if name != "ce":
            print(f"ratio {name}/ce: {median / medians['ce']:.2f}")


if __name__ == "__main__":
    main()
