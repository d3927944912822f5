"""One run end to end: noisy data, training, per-example outputs, detection scores.

``train_and_evaluate(config, workdir)`` writes to ``workdir``:

- ``config.json``: the config with defaults resolved (the delay a robust loss got, ...).
- ``metrics.jsonl``: one line per epoch (train loss, accuracy on the noisy labels, fraction of
  switched-off examples, clean test accuracy, ...).
- ``checkpoints/``: orbax checkpoints, one per epoch, the last 3 kept; ``resume=True`` continues
  from the latest.
- ``predictions.npz``: per training example in canonical order: ``p_t``, ``probs``, ``margin``,
  ``pred``, ``weight``, ``given_label``, ``true_label``, ``is_corrupted``.
- ``summary.json``: clean test accuracy, and for each detector precision, recall, F1, balanced
  accuracy, plus AUROC of ``1 - p_t`` and precision at k = number of corrupted examples.

Every file is written to a temporary name and renamed, so a killed run leaves no truncated file.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from robust_losses_jax import (
    config as config_lib,
)
from robust_losses_jax import (
    corruption,
    detection,
    input_pipeline,
    metrics,
    models,
    train,
)

CHECKPOINTS_TO_KEEP = 3


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient."""


# --------------------------------------------------------------------------------------------------
# Atomic outputs.
# --------------------------------------------------------------------------------------------------


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write ``path`` through a temporary file in the same directory, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True))


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one line, rewriting the file atomically (it is one line per epoch: small)."""
    old = Path(path).read_text() if Path(path).exists() else ""
    atomic_write(path, lambda f: f.write(old + json.dumps(obj, sort_keys=True) + "\n"))


# --------------------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------------------


def noisy_training_data(cfg: config_lib.Config, data_dir: str | None) -> dict[str, Any]:
    """The training split with corrupted labels, and the test split, as host arrays.

    Corruption is decided over the whole training split from the seed, then the first
    ``train_size`` examples are kept: the same seed gives the same flips whatever the subset.
    """
    train_split = input_pipeline.load_split(cfg.dataset, "train", data_dir)
    test_split = input_pipeline.load_split(cfg.dataset, "test", data_dir, cfg.test_size)
    num_classes = train_split.num_classes
    kwargs: dict[str, Any] = {}
    if cfg.noise_kind == "asymmetric":
        kwargs["asymmetric_map"] = corruption.asymmetric_map_for(cfg.dataset)
    corruption_key = jax.random.fold_in(jax.random.key(cfg.seed), 0)
    noisy, is_corrupted = corruption.corrupt_labels(
        corruption_key,
        train_split.labels,
        num_classes,
        cfg.noise_rate,
        kind=cfg.noise_kind,
        transition=None if cfg.transition is None else np.asarray(cfg.transition),
        **kwargs,
    )
    mean, std = input_pipeline.channel_stats(train_split.images)
    keep = slice(0, cfg.train_size)
    return {
        "images": train_split.images[keep],
        "true_label": train_split.labels[keep],
        "given_label": np.asarray(noisy)[keep],
        "is_corrupted": np.asarray(is_corrupted)[keep],
        "test_images": test_split.images,
        "test_labels": test_split.labels,
        "num_classes": num_classes,
        "class_names": train_split.class_names,
        "mean": mean,
        "std": std,
    }


# --------------------------------------------------------------------------------------------------
# Scoring.
# --------------------------------------------------------------------------------------------------


def score_detection(
    predictions: dict[str, np.ndarray], is_corrupted: np.ndarray, pt_threshold: float
) -> dict[str, Any]:
    """Precision/recall/F1/balanced accuracy per detector, AUROC and precision at k of 1 - p_t."""
    detectors = {
        "argmax_neq_given": detection.predicted_neq_given(
            predictions["probs"], predictions["given_label"]
        ),
        f"pt_below_{pt_threshold:g}": detection.pt_threshold(predictions["p_t"], pt_threshold),
    }
    out: dict[str, Any] = {}
    for name, (is_flagged, _) in detectors.items():
        out[name] = metrics.detection_metrics(is_corrupted, is_flagged)
    out["ranking_1_minus_pt"] = metrics.ranking_metrics(is_corrupted, 1.0 - predictions["p_t"])
    return out


def degeneracy_warning(predictions: dict[str, np.ndarray], num_classes: int) -> str | None:
    """One line when a robust loss has degenerated: weights all but zero, or one class predicted."""
    low = float(np.mean(predictions["weight"] < train.LOW_WEIGHT))
    top_share = float(np.bincount(predictions["pred"], minlength=num_classes).max()) / len(
        predictions["pred"]
    )
    if low > 0.95:
        return f"degenerate: {low:.1%} of training examples have a loss weight below 0.01"
    if top_share > 0.9:
        return f"degenerate: the model predicts one class for {top_share:.1%} of examples"
    return None


# --------------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------------


def _tqdm(iterable: Iterable, enabled: bool, **kwargs) -> Iterable:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def train_and_evaluate(
    cfg: config_lib.Config,
    workdir: str | Path,
    *,
    data_dir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    devices: list | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train on noisy labels, then score detection of the corrupted examples.

    Args:
      cfg: the run's configuration (validated here before any work).
      workdir: output directory (created).
      data_dir: tfds data directory.
      resume: continue from the latest checkpoint in ``workdir``.
      progress: show progress bars.
      devices: devices to run on (default: all local devices).
      log: where one-line messages go.

    Returns:
      The summary (also written to ``summary.json``).
    """
    devices = devices or jax.local_devices()
    config_lib.validate(cfg, num_devices=len(devices))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", cfg.to_json())

    data = noisy_training_data(cfg, data_dir)
    num_train = len(data["given_label"])
    if num_train < cfg.batch_size:
        raise ValueError(f"batch size {cfg.batch_size} exceeds the {num_train} training examples.")
    steps_per_epoch = num_train // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    image_shape = data["images"].shape[1:]
    augment = (
        cfg.dataset in input_pipeline.AUGMENTED_BY_DEFAULT if cfg.augment is None else cfg.augment
    )

    base_key = jax.random.key(cfg.seed)
    init_key, step_key, order_key = (jax.random.fold_in(base_key, i) for i in (1, 2, 3))
    model = models.get_model(
        cfg.model, data["num_classes"], dtype=jnp.dtype(cfg.dtype), bn_axis_name=train.AXIS
    )
    tx = train.make_optimizer(
        cfg.optimizer, cfg.lr, total_steps=total_steps, schedule=cfg.lr_schedule,
        warmup_steps=cfg.warmup_epochs * steps_per_epoch, momentum=cfg.momentum,
        nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
    )  # fmt: skip
    state = train.create_train_state(init_key, model, image_shape, tx)
    step_config = train.StepConfig(
        loss_name=cfg.loss,
        delay_steps=cfg.resolved_delay_epochs * steps_per_epoch,
        ramp_steps=cfg.ramp_epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        augment=augment,
        l1_weight=cfg.l1_weight,
        detach=cfg.detach,
    )
    loss_hparams = {
        k: jnp.float32(v) for k, v in cfg.to_json()["loss_hparams"].items() if k != "detach"
    }
    mean, std = jnp.asarray(data["mean"]), jnp.asarray(data["std"])
    mesh = train.data_mesh(devices)
    train_fn = train.parallelize(
        functools.partial(train.train_step, config=step_config, key=step_key, mean=mean, std=std),
        mesh,
        cfg.parallel,
    )
    eval_fn = train.parallelize(
        functools.partial(train.eval_step, config=step_config, mean=mean, std=std),
        mesh,
        cfg.parallel,
        collective=False,
    )
    sharding = train.batch_sharding(mesh)
    state = train.replicate(state, mesh)
    run_eval = functools.partial(train.evaluate, eval_fn, mesh=mesh, batch_size=cfg.eval_batch_size)

    manager = ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=CHECKPOINTS_TO_KEEP, enable_async_checkpointing=False, create=True
        ),
    )
    start_epoch = 0
    if resume and manager.latest_step() is not None:
        state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(state))
        start_epoch = int(state.step) // steps_per_epoch
        log(f"resumed from epoch {start_epoch} (step {int(state.step)})")
    elif (workdir / "metrics.jsonl").exists():
        (workdir / "metrics.jsonl").unlink()  # A fresh run replaces an old log.

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        order = input_pipeline.epoch_permutation(order_key, epoch, num_train)
        batches = input_pipeline.train_batches(
            data["images"], data["given_label"], order, cfg.batch_size, len(devices)
        )
        step_metrics = []
        for batch in _tqdm(
            input_pipeline.prefetch_to_devices(batches, sharding),
            progress, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
        ):  # fmt: skip
            state, step_out = train_fn(state, batch, loss_hparams)
            step_metrics.append(step_out)
        step_metrics = jax.device_get(step_metrics)
        bad = [i for i, m in enumerate(step_metrics) if int(m["finite"]) == 0]
        if bad:
            raise NonFiniteError(
                f"non-finite loss or gradient in epoch {epoch + 1}, step {bad[0] + 1} of "
                f"{steps_per_epoch} (global step {epoch * steps_per_epoch + bad[0] + 1}); "
                f"likely cause: learning rate {cfg.lr:g} too high for {cfg.optimizer}. The last "
                f"good checkpoint is kept in {workdir / 'checkpoints'}; no summary was written."
            )
        totals = {k: float(sum(m[k] for m in step_metrics)) for k in step_metrics[0]}
        test_out = run_eval(state, data["test_images"], data["test_labels"], loss_hparams)
        record = {
            "epoch": epoch + 1,
            "step": int(state.step),
            "robust_loss_on": bool(int(state.step) > step_config.delay_steps),
            "train_loss": totals["loss_sum"] / totals["count"],
            "train_accuracy_noisy": totals["correct"] / totals["count"],
            "frac_low_weight": totals["low_weight"] / totals["count"],
            "test_accuracy": float(np.mean(test_out["pred"] == data["test_labels"])),
            "seconds": time.perf_counter() - started,
        }
        append_jsonl(workdir / "metrics.jsonl", record)
        manager.save(int(state.step), args=ocp.args.StandardSave(state))
        log(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f}, "
            f"noisy-label acc {record['train_accuracy_noisy']:.4f}, "
            f"low-weight {record['frac_low_weight']:.3f}, test acc {record['test_accuracy']:.4f}"
            f" ({record['seconds']:.1f}s)"
        )
    manager.wait_until_finished()

    # Per-example outputs on the training set, scored against the labels trained on.
    out = run_eval(
        state, data["images"], data["given_label"], loss_hparams,
        progress=functools.partial(_tqdm, enabled=progress, desc="evaluating", leave=False),
    )  # fmt: skip
    predictions = {
        "p_t": out["p_t"],
        "probs": out["probs"],
        "margin": out["margin"],
        "pred": out["pred"],
        "weight": out["weight"],
        "given_label": data["given_label"],
        "true_label": data["true_label"],
        "is_corrupted": data["is_corrupted"],
    }
    atomic_write(
        workdir / "predictions.npz", lambda f: np.savez_compressed(f, **predictions), mode="wb"
    )
    test_out = run_eval(state, data["test_images"], data["test_labels"], loss_hparams)
    warning = degeneracy_warning(predictions, data["num_classes"])
    if warning:
        warnings.warn(warning, stacklevel=2)
        log(f"WARNING: {warning}")
    report = corruption.noise_report(data["true_label"], data["given_label"], data["num_classes"])
    summary = {
        "test_accuracy": float(np.mean(test_out["pred"] == data["test_labels"])),
        "train_accuracy_true_labels": float(np.mean(out["pred"] == data["true_label"])),
        "memorised_fraction": float(
            np.mean(out["pred"][data["is_corrupted"]] == data["given_label"][data["is_corrupted"]])
        )
        if data["is_corrupted"].any()
        else 0.0,
        "num_train": num_train,
        "num_corrupted": int(data["is_corrupted"].sum()),
        "realised_noise_rate": float(report["realised_rate"]),
        "detection": score_detection(predictions, data["is_corrupted"], cfg.pt_threshold),
        "degenerate": warning,
        "epochs": cfg.epochs,
        "devices": len(devices),
    }
    write_json(workdir / "summary.json", summary)
    return summary


def one_line_summary(cfg: config_lib.Config, summary: dict[str, Any]) -> str:
    det = summary["detection"]
    return (
        f"{cfg.loss} {cfg.loss_hparams or ''} on {cfg.dataset} ({cfg.noise_kind} "
        f"{cfg.noise_rate:g}): test acc {summary['test_accuracy']:.4f}; detection F1 "
        f"argmax!=given {det['argmax_neq_given']['f1']:.3f}, "
        f"p_t<{cfg.pt_threshold:g} {det[f'pt_below_{cfg.pt_threshold:g}']['f1']:.3f}; "
        f"AUROC {det['ranking_1_minus_pt']['auroc']:.3f}"
    )
