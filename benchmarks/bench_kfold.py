"""Wall time of the 5-fold Confident Learning protocol: PyTorch reference, sequential, stacked.

The protocol (the paper's): corrupt 20% of the labels (symmetric), split the training set into
5 folds, train a fresh small CNN on each 4/5 (Adam, batch 128, cross-entropy), predict the held-out
fold, then run Confident Learning on the out-of-sample probabilities. Rows:

- ``torch eager``: ``benchmarks/torch_reference.py`` (the authors' loop, folds one after another;
  needs torch, ``requirements-bench.txt``);
- ``jax sequential``: this project's runner protocol
  (:func:`protocols.cross_validation.cross_validated`) with ``sequential=True``: five models
  one after another, each epoch compiled;
- ``jax stacked``: the same with the five models trained together in one program (the default
  of ``experiments.run --detector=cl``): ``jax.vmap`` over the models on accelerators, a
  loop over them inside the program on CPU (see :mod:`robust_losses_jax.training.programs`).

Each JAX row includes what the runner does besides training (compilation, checkpoints as the
runner makes them, and a 1,000-example test evaluation per fold after its last epoch: the
runner's ``--eval-every`` is set to the epochs, since the reference evaluates no test set; pass
``--eval-every=1`` for the runner's default of one per epoch; ``--checkpoint-every`` and
``--checkpoint-min-interval`` default to the runner's: every epoch, at most once a minute;
``--checkpoint-min-interval=0`` for one per epoch and model); the table reports the CL F1 of
each row as a check that they did the same work. Fashion-MNIST comes from tfds (prepared
offline from Debian's package) or ``--npz`` (``images`` uint8 ``[N, 28, 28, 1]``, ``labels``),
for machines without tfds.

    python -m benchmarks.bench_kfold --quick          # 1,500 examples, 1 epoch: < 2 min (CPU)
    .venv-bench/bin/python -m benchmarks.bench_kfold  # 10,000 examples, 3 epochs, with torch
    .venv-bench/bin/python -m benchmarks.bench_kfold --train-size=5000 --epochs=2 --repeats=3

Every JAX row starts cold (an empty compilation cache of its own, no program compiled in this
process); ``--warm`` adds each row again on its filled cache. With ``--repeats`` the rows run in
interleaved rounds and the ratios are of the medians (the machine is shared and noisy).

Ends with ``ratio <name>: <x.xx>`` (greater than 1: the first-named is faster).
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax import corruption, detection, input_pipeline, metrics, xla_setup
from robust_losses_jax.noisy_data import NoisyData
from robust_losses_jax.protocols import cross_validation
from robust_losses_jax.training import loop
from robust_losses_jax.training.engines import ProgramCache


def load_data(num_train: int, num_test: int, npz: str | None):
    if npz:
        with np.load(npz) as f:
            images, labels = f["images"], f["labels"].astype(np.int32)
        test_images, test_labels = images[num_train : num_train + num_test], labels[
            num_train : num_train + num_test
        ]  # fmt: skip
        return images[:num_train], labels[:num_train], test_images, test_labels
    train = input_pipeline.load_split("fashion_mnist", "train", num_examples=num_train)
    test = input_pipeline.load_split("fashion_mnist", "test", num_examples=num_test)
    return train.images, train.labels, test.images, test.labels


# Seconds spent making programs, by JAX's monitoring events: tracing, lowering to StableHLO and
# XLA's compilation (or loading from the persistent cache).
COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}


def jax_protocol(cfg, data, workdir: Path) -> tuple[float, dict, dict, dict]:
    """Seconds, CL metrics, seconds by phase (``loop.fit``'s and ``other``) and seconds
    spent making programs (``trace``, ``lower``, ``compile``; these are inside the phases)."""
    timings: dict[str, float] = {}
    compile_seconds = dict.fromkeys(COMPILE_EVENTS.values(), 0.0)

    def on_event(event: str, seconds: float, **_) -> None:
        if event in COMPILE_EVENTS:
            compile_seconds[COMPILE_EVENTS[event]] += seconds

    jax.monitoring.register_event_duration_secs_listener(on_event)
    start = time.perf_counter()
    context = loop.FitContext(
        workdir, jax.local_devices(), progress=False, log=lambda _: None, timings=timings,
        cache=ProgramCache(),  # The run's folds share their programs, as in a real run.
    )  # fmt: skip
    fit_run = functools.partial(loop.fit, cfg, data, context=context)
    try:
        _, extra = cross_validation.cross_validated(
            cfg, data, fit_run, workdir, jax.random.key(cfg.seed), lambda _: None
        )
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    seconds = time.perf_counter() - start
    # Out-of-sample outputs, fold bookkeeping and CL: what fit's phases do not hold.
    timings["other"] = seconds - sum(timings.values())
    return seconds, extra["confident_learning"], timings, compile_seconds


def torch_protocol(cfg, data) -> tuple[float, dict] | None:
    try:
        from benchmarks import torch_reference
    except ImportError:
        return None
    import torch

    start = time.perf_counter()
    fold_of = cross_validation.cross_validation_folds(
        jax.random.key(cfg.seed), len(data.given_label), cfg.folds
    )
    probs = torch_reference.kfold_protocol(
        data.images, data.given_label, folds=cfg.folds, fold_of=fold_of, epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, num_classes=data.num_classes,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )  # fmt: skip
    is_flagged, _ = detection.confident_learning(data.given_label, probs)
    seconds = time.perf_counter() - start
    return seconds, metrics.detection_metrics(data.is_corrupted, is_flagged)


def main(argv: list[str] | None = None) -> None:
    xla_setup.configure_cpu()  # Before JAX starts its backends.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--npz", default=None, help="images/labels arrays instead of tfds")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--eval-every", type=int, default=None, help="JAX rows: test every N epochs (default: last)"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=1, help="JAX rows: checkpoint every N epochs"
    )
    parser.add_argument(
        "--checkpoint-min-interval", type=float,
        default=config_lib.Config().checkpoint_min_interval,
        help="JAX rows: seconds between checkpoints at least (0: every --checkpoint-every)",
    )  # fmt: skip
    parser.add_argument(
        "--warm", action="store_true", help="also rerun the JAX rows with a warm compile cache"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds of every row, interleaved; medians reported"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats} must be >= 1")
    num_train = args.train_size or (1500 if args.quick else 10_000)
    epochs = args.epochs or (1 if args.quick else 3)
    images, true_labels, test_images, test_labels = load_data(num_train, 1000, args.npz)
    cfg = config_lib.Config(
        epochs=epochs, folds=args.folds, detector="cl", train_size=num_train, seed=0,
        eval_every=epochs if args.eval_every is None else args.eval_every,
        checkpoint_every=args.checkpoint_every,
        checkpoint_min_interval=args.checkpoint_min_interval,
    )  # fmt: skip
    config_lib.validate(cfg, num_devices=len(jax.local_devices()))
    noisy, is_corrupted = corruption.corrupt_labels(
        jax.random.fold_in(jax.random.key(cfg.seed), 0), true_labels, 10, cfg.noise_rate
    )
    mean, std = input_pipeline.channel_stats(images)
    data = NoisyData(
        images=images, true_label=true_labels, given_label=np.asarray(noisy),
        is_corrupted=np.asarray(is_corrupted), test_images=test_images, test_labels=test_labels,
        num_classes=10, class_names=None, mean=mean, std=std,
    )  # fmt: skip
    print(
        f"5-fold CL protocol: {num_train} Fashion-MNIST examples, {epochs} epoch(s), small CNN, "
        f"batch {cfg.batch_size}; backend {jax.default_backend()} "
        f"({jax.devices()[0].device_kind}), {len(jax.local_devices())} device(s); JAX rows test "
        f"every {cfg.eval_every} and checkpoint every {cfg.checkpoint_every} epoch(s), at most "
        f"once per {cfg.checkpoint_min_interval:g} s; "
        f"{args.repeats} round(s)"
    )
    print(f"{'row':<22} {'seconds':>9} {'CL F1':>7}")
    times: dict[str, list[float]] = {}

    def record(name: str, result: tuple) -> None:
        times.setdefault(name, []).append(result[0])
        phases = ""
        if len(result) > 2:  # A JAX row: where its seconds went.
            phases = "   " + " | ".join(
                ", ".join(f"{k} {v:.1f}" for k, v in part.items()) for part in result[2:]
            )
        print(f"{name:<22} {result[0]:>9.1f} {result[1]['f1']:>7.3f}{phases}", flush=True)

    runs = [("jax sequential", True), ("jax stacked", False)]
    cache_root = tempfile.mkdtemp(prefix="bench_kfold_")  # Removed at the end.
    for _ in range(args.repeats):  # Interleaved, so a slow spell of the machine hits every row.
        if not args.no_torch:
            result = torch_protocol(cfg, data)
            if result is not None:
                record("torch eager", result)
        caches = {}
        for name, sequential in runs:
            # As the runner does by default, but cold: an empty cache of its own, so each
            # distinct program is compiled once (the sequential folds share theirs, as they do
            # in a real run), and nothing compiled by an earlier row is reused.
            caches[name] = tempfile.mkdtemp(prefix="bench_kfold_jax_cache_", dir=cache_root)
            use_compilation_cache(caches[name])
            record(name, run_jax(cfg, data, sequential))
        if args.warm:  # Again, every program now in the compilation cache: the run time alone.
            for name, sequential in runs:
                use_compilation_cache(caches[name])
                record(f"{name}, warm", run_jax(cfg, data, sequential))
    shutil.rmtree(cache_root, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    if args.repeats > 1:
        print(f"medians of {args.repeats} rounds:")
        for name, value in median.items():
            print(f"{name:<22} {value:>9.1f}")
    if "torch eager" in median:
        for name in ("jax sequential", "jax stacked"):
            print(f"ratio {name} vs torch: {median['torch eager'] / median[name]:.2f}")
    print(f"ratio stacked vs sequential: {median['jax sequential'] / median['jax stacked']:.2f}")
    if args.warm:
        warm = median["jax sequential, warm"] / median["jax stacked, warm"]
        print(f"ratio stacked vs sequential, warm cache: {warm:.2f}")


def use_compilation_cache(path: str) -> None:
    """JAX's persistent cache in ``path``, and no program compiled earlier in this process."""
    from jax.experimental.compilation_cache import compilation_cache

    jax.clear_caches()
    compilation_cache.reset_cache()
    xla_setup.enable_compilation_cache(path)


def run_jax(cfg, data, sequential: bool) -> tuple[float, dict, dict, dict]:
    run_cfg = config_lib.Config(**{**cfg.__dict__, "sequential": sequential})
    with tempfile.TemporaryDirectory() as workdir:
        return jax_protocol(run_cfg, data, Path(workdir))


if __name__ == "__main__":
    main()
