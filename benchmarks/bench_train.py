"""Training throughput: this project against the PyTorch reference, same model, loss and batch.

Rows, per model (the paper's small CNN on 28x28x1, ResNet-18 on 32x32x3; Adam, batch 128,
cross-entropy, synthetic uint8 data):

- ``jax device``: the split on the device, each epoch one compiled program (``lax.scan`` over
  the batches, :mod:`robust_losses_jax.training.programs`), what ``experiments.run`` does by
  default;
- ``jax stream``: host batches, one pmap'd step at a time (``--data-placement=stream``);
- ``torch eager``: ``benchmarks/torch_reference.py``, the authors' loop (eager, a step at a
  time), when torch is installed (``requirements-bench.txt``).

Examples/second are the median over repeats of a timed epoch; compile time (first epoch minus a
timed one) is reported apart. On a GPU the table adds the model's FLOP/s (the convolutions and
matrix products of one forward pass, counted from its jaxpr, times 3 for the backward) and its
fraction of ``--peak-tflops``.

    python -m benchmarks.bench_train --quick          # under two minutes on the 2-core CPU
    .venv-bench/bin/python -m benchmarks.bench_train  # with the PyTorch rows
    python -m benchmarks.bench_train --models=resnet18 --dtype=bfloat16   # on a GPU

Ends with ``ratio <name>: <x.xx>`` lines: this project's examples/second over the reference's
(greater than 1: this project is faster).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from robust_losses_jax import input_pipeline, models, xla_setup
from robust_losses_jax.training import parallel, programs, stacking
from robust_losses_jax.training import step as step_lib

CASES = {"small_cnn": (28, 1), "resnet18": (32, 3)}
# Dense bf16 peak of the chips this was run on (TFLOP/s), for the fraction-of-peak column.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def synthetic_split(num_examples: int, image_size: int, channels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_examples, image_size, image_size, channels), np.uint8)
    labels = rng.integers(0, 10, num_examples).astype(np.int32)
    return images, labels


def jax_setting(model_name: str, image_shape, dtype: str, steps_per_epoch: int):
    model = models.get_model(model_name, 10, dtype=jnp.dtype(dtype), bn_axis_name=parallel.AXIS)
    tx = step_lib.make_optimizer("adam", 1e-3, total_steps=10**6)
    state = step_lib.create_train_state(jax.random.key(0), model, image_shape, tx)
    config = step_lib.StepConfig(loss_name="cross_entropy", steps_per_epoch=steps_per_epoch)
    return model, state, config


def time_epochs(epoch, state, repeats: int) -> tuple[float, float]:
    """Median seconds of ``repeats`` timed epochs after a first; compile time (first - median)."""
    start = time.perf_counter()
    state = epoch(state, 0)
    first = time.perf_counter() - start
    times = []
    for e in range(repeats):
        start = time.perf_counter()
        state = epoch(state, e + 1)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return median, max(first - median, 0.0)


def time_jax_device(model_name, images, labels, *, batch, repeats, dtype, mesh):
    """Median seconds of an epoch compiled whole, and the compile time."""
    steps = len(labels) // batch
    _, state, config = jax_setting(model_name, images.shape[1:], dtype, steps)
    mean, std = (jnp.asarray(x) for x in input_pipeline.channel_stats(images))
    keys = tuple(jax.random.fold_in(jax.random.key(1), i) for i in range(3))
    member = stacking.Member(labels, np.arange(len(labels)), keys, {})

    def step_fn(s, b, h, k):
        return step_lib.train_step(s, b, h, config=config, key=k, mean=mean, std=std)

    program = programs.train_epoch_program(
        step_fn, mesh, "pmap", sizes=(len(labels),), batch_size=batch, steps_per_epoch=steps
    )
    states = parallel.replicate(stacking.stack([state]), mesh)
    data = parallel.replicate(stacking.stack_data(images, [member]), mesh)
    args = ({}, keys[1][None], keys[2][None])

    def epoch(states, e):
        states, metrics = program(states, data, args[0], args[1], args[2], jnp.int32(e))
        jax.block_until_ready(metrics)
        return states

    return time_epochs(epoch, states, repeats)


def time_jax_stream(model_name, images, labels, *, batch, repeats, dtype, mesh):
    """Median seconds of an epoch of host-fed steps (one pmap'd step each), and compile time."""
    steps = len(labels) // batch
    _, state, config = jax_setting(model_name, images.shape[1:], dtype, steps)
    mean, std = (jnp.asarray(x) for x in input_pipeline.channel_stats(images))
    step = functools.partial(
        step_lib.train_step, config=config, key=jax.random.key(1), mean=mean, std=std
    )
    fn = parallel.parallelize(step, mesh, "pmap")
    sharding = parallel.batch_sharding(mesh)
    state = parallel.replicate(state, mesh)

    def epoch(state, e):
        order = input_pipeline.epoch_permutation(jax.random.key(2), e, len(labels))
        batches = input_pipeline.train_batches(images, labels, order, batch, mesh.devices.size)
        metrics = None
        for b in input_pipeline.prefetch_to_devices(batches, sharding):
            state, metrics = fn(state, b, {})
        jax.block_until_ready(metrics)
        return state

    return time_epochs(epoch, state, repeats)


def forward_flops(model_name: str, image_shape, batch: int, dtype: str) -> float:
    """FLOPs of the convolutions and matrix products of one training-mode forward pass."""
    _, state, _ = jax_setting(model_name, image_shape, dtype, 1)
    variables = {"params": state.params}
    if jax.tree.leaves(state.batch_stats):
        variables["batch_stats"] = state.batch_stats
    x = jnp.zeros((batch, *image_shape), jnp.float32)
    single = models.get_model(model_name, 10, dtype=jnp.dtype(dtype))  # No cross-device BN.
    jaxpr = jax.make_jaxpr(
        lambda v, x: single.apply(
            v, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]
        )
    )(variables, x)
    return jaxpr_flops(jaxpr.jaxpr)


def jaxpr_flops(jaxpr) -> float:
    """2 x multiply-adds of the ``conv_general_dilated`` and ``dot_general`` equations.

    Counted from the program before compilation, the same on every backend (XLA's own
    ``cost_analysis`` reports none for GPU convolutions, which become cuDNN calls). Nested
    programs are counted once (``scan``: times its length); elementwise work is not counted.
    """
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        out = eqn.outvars[0].aval.shape if eqn.outvars else ()
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
            per_output = np.prod([rhs[d] for d in rhs_spec[1:]], dtype=np.float64)
            total += 2.0 * np.prod(out, dtype=np.float64) * per_output
        elif name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            per_output = np.prod([lhs[d] for d in contract], dtype=np.float64)
            total += 2.0 * np.prod(out, dtype=np.float64) * per_output
        repeat = eqn.params.get("length", 1) if name == "scan" else 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    total += repeat * jaxpr_flops(inner)
    return total


def time_torch(model_name, *, batch, steps, repeats, image_size, channels):
    try:
        from benchmarks import torch_reference
    except ImportError:
        return None
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = torch_reference.throughput(
        model_name, batch_size=batch, steps=steps, image_size=image_size, channels=channels,
        num_classes=10, warmup_steps=min(steps, 3), repeats=repeats, device=device,
    )  # fmt: skip
    rate = statistics.median(result["examples_per_second"])
    return batch * steps / rate, result["warmup_seconds"], result["framework"], device


def main(argv: list[str] | None = None) -> None:
    xla_setup.configure_cpu()  # Before JAX starts its backends.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under two minutes")
    parser.add_argument("--models", default="small_cnn,resnet18")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--dtype", default="float32", help="compute dtype of the JAX rows")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args(argv)

    backend = jax.default_backend()
    on_accelerator = backend != "cpu"
    mesh = parallel.data_mesh(jax.local_devices())
    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in kind), None)
    print(f"backend {backend} ({kind}), {mesh.devices.size} device(s), jax {jax.__version__}, "
          f"dtype {args.dtype}")  # fmt: skip
    header = f"{'model':<10} {'batch':>5} {'row':<13} {'examples/s':>11} {'compile s':>9}"
    if on_accelerator:
        header += f" {'TFLOP/s':>8} {'of peak':>8}"
    print(header)
    ratios = []
    for model_name in args.models.split(","):
        image_size, channels = CASES[model_name]
        small = model_name == "small_cnn"
        if on_accelerator:
            batch, steps, repeats = args.batch_size or 128, args.steps or 100, args.repeats or 5
        elif args.quick:
            batch = args.batch_size or (128 if small else 32)
            steps, repeats = args.steps or (8 if small else 2), args.repeats or (3 if small else 2)
        else:
            batch = args.batch_size or 128
            steps, repeats = args.steps or (40 if small else 4), args.repeats or 5
        images, labels = synthetic_split(batch * steps, image_size, channels)
        flops = forward_flops(model_name, images.shape[1:], batch, args.dtype) if on_accelerator \
            else None  # fmt: skip
        rows = {}
        rows["jax device"] = time_jax_device(
            model_name, images, labels, batch=batch, repeats=repeats, dtype=args.dtype, mesh=mesh
        )
        if not args.no_stream:
            rows["jax stream"] = time_jax_stream(
                model_name, images, labels, batch=batch, repeats=repeats, dtype=args.dtype,
                mesh=mesh,
            )  # fmt: skip
        torch_row = None if args.no_torch else time_torch(
            model_name, batch=batch, steps=steps, repeats=repeats, image_size=image_size,
            channels=channels,
        )  # fmt: skip
        if torch_row is not None:
            rows[f"torch eager ({torch_row[3]})"] = torch_row[:2]
        rates = {}
        for name, (seconds, compile_s) in rows.items():
            rates[name] = batch * steps / seconds
            line = f"{model_name:<10} {batch:>5} {name:<13} {rates[name]:>11.1f} {compile_s:>9.1f}"
            if on_accelerator and flops:
                tflops = 3 * flops * steps / seconds / 1e12
                line += f" {tflops:>8.1f} {tflops / peak:>8.1%}" if peak else f" {tflops:>8.1f}"
            print(line)
        torch_name = next((k for k in rates if k.startswith("torch")), None)
        if torch_name:
            ratios.append(
                (f"{model_name} jax device/torch", rates["jax device"] / rates[torch_name])
            )
        if "jax stream" in rates:
            ratios.append(
                (f"{model_name} jax device/stream", rates["jax device"] / rates["jax stream"])
            )
    if args.dtype == "bfloat16" or on_accelerator:
        print(
            "(FLOPs: convolutions and matrix products of a forward pass x 3; peak: "
            f"{peak} TFLOP/s dense bf16)"
        )
    for name, value in ratios:
        print(f"ratio {name}: {value:.2f}")


if __name__ == "__main__":
    main()
