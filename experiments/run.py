"""Train on noisy labels and score label-error detection.

    python -m experiments.run --loss=power --gamma=2
    python -m experiments.run --loss=ce --epochs=6 --train-size=0 --workdir=workdir/ce

Flags map onto ``robust_losses_jax.config.Config`` (its defaults are the defaults here); outputs go
to ``--workdir`` (see ``robust_losses_jax.experiment``). Bad flags: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from robust_losses_jax import xla_setup

xla_setup.configure_cpu()  # Before JAX starts its backends (see xla_setup).

from robust_losses_jax import user_data  # noqa: E402
from robust_losses_jax.config import Config  # noqa: E402

LOSS_FLAGS = ("gamma", "tau", "q", "alpha", "beta", "epsilon", "min_prob", "label_clamp")


def build_parser() -> argparse.ArgumentParser:
    """The runner's flags (``experiments.sweep`` reuses them after ``--``)."""
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = p.add_argument
    add(
        "--dataset",
        default=d.dataset,
        help="a tfds name (fashion_mnist, mnist, cifar10, ...); npz:PATH (train_images uint8 "
        "[N, H, W(, C)], train_labels; optional num_classes or class_names, test_images, "
        "test_labels); or folder:PATH (one sub-folder per class of PNG/JPEG files: "
        f"{user_data.FOLDER_RULE})",
    )
    add("--model", default=d.model, help="small_cnn, mlp, resnet18, resnet34, resnet50")
    add("--loss", default=d.loss, help="ce, focal, power, cutoff, gce, sce, nce_rce, ...")
    for name in LOSS_FLAGS:
        add(f"--{name.replace('_', '-')}", type=float, default=None, help=f"loss {name}")
    add(
        "--detach",
        action=argparse.BooleanOptionalAction,
        default=d.detach,
        help="power: stop the gradient through the weight p_t**gamma",
    )
    add(
        "--delay",
        type=int,
        default=None,
        help="epochs of cross-entropy first (default: 2 for power/cutoff, else 0)",
    )
    add("--ramp", type=int, default=d.ramp_epochs, help="epochs to ramp gamma/tau after the delay")
    add("--noise-rate", type=float, default=d.noise_rate)
    add("--noise-kind", default=d.noise_kind, help="symmetric, asymmetric, transition")
    add("--transition", default=None, help="JSON file with a row-stochastic [C, C] matrix")
    add("--epochs", type=int, default=d.epochs)
    add(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help="test accuracy, and the training rows' p_t (detection per epoch), every N epochs "
        "(and after the last)",
    )
    add(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        help="checkpoint every N epochs (and after the last); --resume restarts from the last",
    )
    add(
        "--checkpoint-min-interval",
        type=float,
        default=d.checkpoint_min_interval,
        help="seconds: skip an epoch's checkpoint while the last is younger (0: never skip)",
    )
    add("--batch-size", type=int, default=d.batch_size)
    add("--eval-batch-size", type=int, default=d.eval_batch_size)
    add("--optimizer", default=d.optimizer, help="sgd, adam, adamw")
    add("--lr", type=float, default=d.lr)
    add("--lr-schedule", default=d.lr_schedule, help="constant, cosine, step")
    add("--warmup-epochs", type=int, default=d.warmup_epochs)
    add("--momentum", type=float, default=d.momentum)
    add("--nesterov", action=argparse.BooleanOptionalAction, default=d.nesterov)
    add("--weight-decay", type=float, default=d.weight_decay)
    add("--l1", type=float, default=d.l1_weight, help="L1 penalty on the weights (ANL)")
    add("--seed", type=int, default=d.seed)
    add(
        "--train-size",
        type=int,
        default=d.train_size,
        help="first N training examples in canonical order; 0 = the whole split",
    )
    add("--test-size", type=int, default=0, help="first N test examples; 0 = all")
    add(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CIFAR augmentation (default: on for CIFAR)",
    )
    add("--dtype", default=d.dtype, help="float32 or bfloat16 (compute dtype)")
    add("--parallel", default=d.parallel, help="pmap or shard_map")
    add("--pt-threshold", type=float, default=d.pt_threshold)
    add("--detector", default=d.detector, help="pt (one run), cl (K-fold Confident Learning), aum")
    add("--folds", type=int, default=d.folds, help="folds of the cl detector")
    add("--cl-filter-by", default=d.cl_filter_by, help="Confident Learning's filter_by")
    add("--aum-percentile", type=float, default=d.aum_percentile)
    add(
        "--data-placement",
        default=d.data_placement,
        help="device (epochs compiled whole, models vmapped), stream (host batches), auto",
    )
    add(
        "--sequential",
        action="store_true",
        help="train the CL folds / AUM runs one after another instead of vmapped together",
    )
    add(
        "--compilation-cache",
        default=xla_setup.default_compilation_cache(),
        help="JAX's persistent compilation cache directory ('' to turn it off)",
    )
    add("--data-dir", default=None, help="tfds data directory")
    add("--workdir", default="workdir/run")
    add("--resume", action="store_true", help="continue from the latest checkpoint")
    add("--overwrite", action="store_true", help="replace a run already in --workdir")
    add("--progress", action=argparse.BooleanOptionalAction, default=True)
    add(
        "--coordinator-address",
        default=None,
        help="multi-host: host:port of process 0 (jax.distributed.initialize)",
    )
    add("--num-processes", type=int, default=None, help="multi-host: number of processes")
    add("--process-id", type=int, default=None, help="multi-host: this process's index")
    add(
        "--distributed",
        action="store_true",
        help="multi-host with settings from the environment (TPU pod slices, SLURM)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    transition = None
    if args.transition:
        try:
            transition = tuple(map(tuple, json.loads(Path(args.transition).read_text())))
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(
                f"--transition {args.transition}: not a JSON [C, C] matrix ({error})."
            ) from None
    return Config(
        dataset=args.dataset, model=args.model, loss=args.loss,
        loss_hparams={k: getattr(args, k) for k in LOSS_FLAGS if getattr(args, k) is not None},
        detach=args.detach, delay_epochs=args.delay, ramp_epochs=args.ramp,
        noise_rate=args.noise_rate, noise_kind=args.noise_kind, transition=transition,
        epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
        optimizer=args.optimizer, lr=args.lr, lr_schedule=args.lr_schedule,
        warmup_epochs=args.warmup_epochs, momentum=args.momentum, nesterov=args.nesterov,
        weight_decay=args.weight_decay, l1_weight=args.l1, seed=args.seed,
        train_size=args.train_size or None, test_size=args.test_size or None,
        augment=args.augment, dtype=args.dtype, parallel=args.parallel,
        pt_threshold=args.pt_threshold, detector=args.detector, folds=args.folds,
        cl_filter_by=args.cl_filter_by, aum_percentile=args.aum_percentile,
        data_placement=args.data_placement, sequential=args.sequential,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        checkpoint_min_interval=args.checkpoint_min_interval,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jax

    xla_setup.enable_compilation_cache(args.compilation_cache)
    if args.distributed or args.coordinator_address or (args.num_processes or 1) > 1:
        try:
            xla_setup.initialize_distributed(
                args.coordinator_address, args.num_processes, args.process_id
            )
        except (ValueError, RuntimeError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    from robust_losses_jax import config as config_lib
    from robust_losses_jax import experiment, input_pipeline, records, trainer

    try:
        cfg = build_config(args)
        config_lib.validate(cfg, num_devices=jax.device_count())
        input_pipeline.check_dataset(cfg.dataset, args.data_dir)
        experiment.check_workdir(cfg, args.workdir, resume=args.resume, overwrite=args.overwrite)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        summary = experiment.train_and_evaluate(
            cfg, args.workdir, data_dir=args.data_dir, resume=args.resume,
            overwrite=args.overwrite, progress=args.progress,
        )  # fmt: skip
    except (trainer.NonFiniteError, trainer.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)  # One line; no summary was written.
        return 1
    except input_pipeline.DatasetUnavailableError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if records.is_writer():
        print(experiment.one_line_summary(cfg, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
