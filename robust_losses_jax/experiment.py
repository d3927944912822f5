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

import contextlib
import dataclasses
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


class CheckpointError(RuntimeError):
    """A checkpoint that exists cannot be read back."""


def restore_latest(manager: ocp.CheckpointManager, state: Any) -> Any:
    """The latest finalised checkpoint restored into ``state``'s structure and shardings.

    Orbax writes a checkpoint to a temporary folder and renames it when complete, and
    ``latest_step`` only sees finalised ones, so a checkpoint half-written by a killed run is
    never loaded. A finalised one that cannot be read (a truncated or altered file) raises
    :class:`CheckpointError` naming it and the earlier checkpoints to fall back to.
    """
    step = manager.latest_step()
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(state))
    except Exception as error:  # Orbax/tensorstore raise many types for a damaged file.
        path = Path(manager.directory) / str(step)
        earlier = [s for s in manager.all_steps() if s != step]
        fallback = (
            f"delete {path} to resume from step {max(earlier)} (checkpoints kept: "
            f"{', '.join(map(str, sorted(earlier)))})"
            if earlier
            else "no earlier checkpoint is kept; pass --overwrite to start again"
        )
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be restored ({type(error).__name__}: {reason}); {fallback}."
        ) from error


# --------------------------------------------------------------------------------------------------
# Atomic outputs.
# --------------------------------------------------------------------------------------------------


def is_writer() -> bool:
    """Only process 0 writes outputs (every process computes them, in a multi-host run)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait for every process (multi-host) before reading what process 0 wrote."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write ``path`` through a temporary file in the same directory, then rename it into place.

    On processes other than 0 (multi-host) it writes nothing.
    """
    if not is_writer():
        return
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


# What a run writes into its workdir (``clear_outputs`` removes exactly these).
OUTPUT_PATTERNS = ("config.json", "metrics.jsonl", "predictions.npz", "summary.json",
                   "fold*.npz", "train_record*.npz", "checkpoints", "checkpoints_*")  # fmt: skip
# Config fields a resumed run may change: training can be extended.
RESUMABLE_CHANGES = ("epochs",)


def check_workdir(
    cfg: config_lib.Config, workdir: str | Path, *, resume: bool, overwrite: bool
) -> None:
    """Refuse a workdir that holds another run, before any work (``ValueError``, one line).

    A workdir with a ``config.json`` is taken only with ``overwrite`` (the old run is removed),
    or with ``resume`` when the configs agree except for ``epochs``.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other; pass one.")
    path = Path(workdir) / "config.json"
    if overwrite or not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is unreadable ({error}); pass --overwrite to replace it."
        ) from None
    new = cfg.to_json()
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not resume:
        raise ValueError(
            f"workdir {workdir} already holds a run; pass --resume to continue it or --overwrite "
            "to replace it."
        )
    blocking = [k for k in differ if k not in RESUMABLE_CHANGES]
    if blocking:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in blocking)
        raise ValueError(
            f"workdir {workdir} holds a run with a different config ({changes}); --resume only "
            "continues the same run (epochs may change); use another --workdir or --overwrite."
        )


def clear_outputs(workdir: Path) -> None:
    """Remove a previous run's outputs from ``workdir`` (nothing else; process 0 only)."""
    import shutil

    if not is_writer():
        return
    for pattern in OUTPUT_PATTERNS:
        for path in Path(workdir).glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _drop_epochs_after(path: Path, tag: str, epoch: int) -> None:
    """Forget this run's logged epochs after ``epoch`` (they are trained again on resume)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    records = [json.loads(x) for x in lines]
    kept = [
        x
        for x, r in zip(lines, records, strict=True)
        if r.get("run", "") != tag or r["epoch"] <= epoch
    ]
    if len(kept) != len(lines):
        atomic_write(path, lambda f: f.write("".join(x + "\n" for x in kept)))


@dataclasses.dataclass(frozen=True)
class Fitted:
    """One trained model and what its training recorded.

    Attributes:
      state: the final train state (replicated on the devices).
      evaluate: ``evaluate(state, images, labels)`` -> per-example host outputs
        (:func:`train.evaluate`).
      aum_sum, aum_count: ``[N]`` sums and counts of the training margins of each example
        (every step, from the train step's own logits), for AUM.
      test_accuracy: clean test accuracy of the final model.
    """

    state: Any
    evaluate: Callable[..., dict[str, np.ndarray]]
    aum_sum: np.ndarray
    aum_count: np.ndarray
    test_accuracy: float


def fit(
    cfg: config_lib.Config,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    real_classes: int | None = None,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    keys: tuple[jax.Array, jax.Array, jax.Array],
    workdir: Path,
    tag: str = "",
    is_corrupted: np.ndarray | None = None,
    resume: bool = False,
    progress: bool = True,
    devices: list,
    log: Callable[[str], None] = print,
) -> Fitted:
    """Train one freshly initialised model on ``images``/``labels`` (the labels trained on).

    Args:
      num_classes: outputs of the model (``C + 1`` with AUM's threshold class).
      real_classes: ``C``, the dataset's classes (default ``num_classes``): test predictions are
        the argmax over the first ``C`` logits.
      keys: ``(init, step, order)`` PRNG keys: initial weights, augmentation/dropout, batch order.
      workdir: checkpoints go to ``checkpoints`` (``checkpoints_<tag>`` when tagged), epochs are
        appended to ``metrics.jsonl`` (with ``"run": tag`` when tagged).
      is_corrupted: when given (``[N]``), the training set is evaluated after every epoch:
        its ``p_t`` per epoch go to ``train_record*.npz`` (``p_t_history`` ``[E, N]`` float16)
        and ``metrics.jsonl`` gets that epoch's detection F1 (argmax != given), AUROC of
        ``1 - p_t`` and memorised fraction (corrupted examples predicted as their noisy label).
      resume: continue from the latest checkpoint of this run.

    Per-example training records, one row per epoch (``margin_sum_history``,
    ``margin_count_history`` for AUM; ``p_t_history``), are written before each checkpoint to
    ``train_record.npz`` (``train_record_<tag>.npz``), so a resumed run keeps them.
    """
    num_train = len(labels)
    if num_train < cfg.batch_size:
        raise ValueError(f"batch size {cfg.batch_size} exceeds the {num_train} training examples.")
    steps_per_epoch = num_train // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    augment = (
        cfg.dataset in input_pipeline.AUGMENTED_BY_DEFAULT if cfg.augment is None else cfg.augment
    )
    init_key, step_key, order_key = keys
    model = models.get_model(
        cfg.model, num_classes, dtype=jnp.dtype(cfg.dtype), bn_axis_name=train.AXIS
    )
    tx = train.make_optimizer(
        cfg.optimizer, cfg.lr, total_steps=total_steps, schedule=cfg.lr_schedule,
        warmup_steps=cfg.warmup_epochs * steps_per_epoch, momentum=cfg.momentum,
        nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
    )  # fmt: skip
    state = train.create_train_state(init_key, model, images.shape[1:], tx)
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
    mean, std = jnp.asarray(mean), jnp.asarray(std)
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
    run_eval = functools.partial(
        train.evaluate, eval_fn, mesh=mesh, batch_size=cfg.eval_batch_size,
        loss_hparams=loss_hparams,
    )  # fmt: skip
    real_classes = real_classes or num_classes

    def test_accuracy(state) -> float:
        logits = run_eval(state, test_images, test_labels)["logits"][:, :real_classes]
        return float(np.mean(logits.argmax(-1) == test_labels))

    suffix = f"_{tag}" if tag else ""
    manager = ocp.CheckpointManager(
        (workdir / f"checkpoints{suffix}").absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=CHECKPOINTS_TO_KEEP, enable_async_checkpointing=False, create=True
        ),
    )
    record_path = workdir / f"train_record{suffix}.npz"
    # Per epoch: margin sums and counts of each example (AUM), and p_t when tracked. Written
    # before the epoch's checkpoint, so a run killed in between finds every epoch it resumes
    # from (and ignores the ones after).
    history: dict[str, list[np.ndarray]] = {"margin_sum": [], "margin_count": [], "p_t": []}
    start_epoch = 0
    if resume and manager.latest_step() is not None:
        state = restore_latest(manager, state)
        start_epoch = int(state.step) // steps_per_epoch
        with np.load(record_path) if record_path.exists() else contextlib.nullcontext({}) as saved:
            for name in history:
                history[name] = list(saved.get(f"{name}_history", []))[:start_epoch]
        if len(history["margin_sum"]) != start_epoch:
            raise CheckpointError(
                f"{record_path} holds {len(history['margin_sum'])} epochs of training records, "
                f"fewer than the checkpoint's {start_epoch}; pass --overwrite to start again."
            )
        _drop_epochs_after(workdir / "metrics.jsonl", tag, start_epoch)
        log(f"resumed {tag or 'run'} from epoch {start_epoch} (step {int(state.step)})")

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        order = input_pipeline.epoch_permutation(order_key, epoch, num_train)
        batches = (
            input_pipeline.process_slice(batch, jax.process_index(), jax.process_count())
            for batch in input_pipeline.train_batches(
                images, labels, order, cfg.batch_size, len(devices)
            )
        )
        step_metrics = []
        desc = f"{tag + ' ' if tag else ''}epoch {epoch + 1}/{cfg.epochs}"
        for batch in _tqdm(
            input_pipeline.prefetch_to_devices(batches, sharding),
            progress, total=steps_per_epoch, desc=desc, leave=False,
        ):  # fmt: skip
            state, step_out = train_fn(state, batch, loss_hparams)
            step_metrics.append(step_out)
        step_metrics = jax.device_get(step_metrics)
        bad = [i for i, m in enumerate(step_metrics) if int(m["finite"]) == 0]
        if bad:
            raise NonFiniteError(
                f"non-finite loss or gradient in {tag + ', ' if tag else ''}epoch {epoch + 1}, "
                f"step {bad[0] + 1} of {steps_per_epoch} (global step "
                f"{epoch * steps_per_epoch + bad[0] + 1}); likely cause: learning rate "
                f"{cfg.lr:g} too high for {cfg.optimizer}. The last good checkpoint is kept in "
                f"{workdir / f'checkpoints{suffix}'}; no summary was written."
            )
        margin_sum, margin_count = np.zeros(num_train, np.float32), np.zeros(num_train, np.uint8)
        for m in step_metrics:
            np.add.at(margin_sum, m["index"], m["margin"])
            np.add.at(margin_count, m["index"], 1)
        history["margin_sum"].append(margin_sum)
        history["margin_count"].append(margin_count)
        scalars = ("loss_sum", "correct", "low_weight", "count")
        totals = {k: float(sum(m[k] for m in step_metrics)) for k in scalars}
        record = {
            **({"run": tag} if tag else {}),
            "epoch": epoch + 1,
            "step": int(state.step),
            "robust_loss_on": bool(int(state.step) > step_config.delay_steps),
            "train_loss": totals["loss_sum"] / totals["count"],
            "train_accuracy_noisy": totals["correct"] / totals["count"],
            "frac_low_weight": totals["low_weight"] / totals["count"],
            "test_accuracy": test_accuracy(state),
        }
        if is_corrupted is not None:
            out = run_eval(state, images, labels)
            history["p_t"].append(out["p_t"].astype(np.float16))
            record.update(_epoch_detection(out, labels, is_corrupted))
        record["seconds"] = time.perf_counter() - started
        saved = {f"{k}_history": np.asarray(v).reshape(-1, num_train) for k, v in history.items()}
        atomic_write(record_path, lambda f, saved=saved: np.savez(f, **saved), mode="wb")
        manager.save(int(state.step), args=ocp.args.StandardSave(train.to_global(state)))
        append_jsonl(workdir / "metrics.jsonl", record)
        log(
            f"{tag + ' ' if tag else ''}epoch {epoch + 1}/{cfg.epochs}: loss "
            f"{record['train_loss']:.4f}, noisy-label acc {record['train_accuracy_noisy']:.4f}, "
            f"low-weight {record['frac_low_weight']:.3f}, test acc {record['test_accuracy']:.4f}"
            f" ({record['seconds']:.1f}s)"
        )
    manager.wait_until_finished()
    aum_sum = np.sum(history["margin_sum"], axis=0, dtype=np.float64).reshape(num_train)
    aum_count = np.sum(history["margin_count"], axis=0, dtype=np.int64).reshape(num_train)
    return Fitted(state, run_eval, aum_sum, aum_count, test_accuracy(state))


def _epoch_detection(
    out: dict[str, np.ndarray], labels: np.ndarray, is_corrupted: np.ndarray
) -> dict[str, float]:
    """This epoch's in-sample detection scores (to watch memorisation set in)."""
    flagged, score = detection.predicted_neq_given(out["probs"], labels)
    return {
        "f1_argmax_neq_given": metrics.detection_metrics(is_corrupted, flagged)["f1"],
        "auroc_1_minus_pt": metrics.ranking_metrics(is_corrupted, score)["auroc"],
        "memorised_fraction": memorised_fraction(out["pred"], labels, is_corrupted),
    }


def memorised_fraction(pred: np.ndarray, given: np.ndarray, is_corrupted: np.ndarray) -> float:
    """The fraction of corrupted examples predicted as their (wrong) given label; 0 if none."""
    if not is_corrupted.any():
        return 0.0
    return float(np.mean(pred[is_corrupted] == given[is_corrupted]))


def fold_assignment(key: jax.Array, num_examples: int, folds: int) -> np.ndarray:
    """``[N]`` int: the fold (0..folds-1) of each example, near-equal sizes, from ``key`` only."""
    order = np.asarray(jax.random.permutation(key, num_examples))
    fold_of = np.empty(num_examples, np.int32)
    fold_of[order] = np.arange(num_examples) % folds
    return fold_of


def _run_keys(base_key: jax.Array, run: int | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(init, step, order)`` keys; run ``None`` is the single in-sample run."""
    keys = tuple(jax.random.fold_in(base_key, i) for i in (1, 2, 3))
    if run is None:
        return keys
    return tuple(jax.random.fold_in(k, 1000 + run) for k in keys)


def _predictions(out: dict[str, np.ndarray], data: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        "p_t": out["p_t"],
        "probs": out["probs"],
        "margin": out["margin"],
        "pred": out["pred"],
        "weight": out["weight"],
        "given_label": data["given_label"],
        "true_label": data["true_label"],
        "is_corrupted": data["is_corrupted"],
    }


def _cross_validated(cfg, data, fit_run, workdir: Path, base_key, log) -> tuple[dict, dict]:
    """K-fold out-of-sample outputs: each fold's rows from a fresh model trained on the others."""
    num_train = len(data["given_label"])
    fold_of = fold_assignment(jax.random.fold_in(base_key, 4), num_train, cfg.folds)
    parts: dict[str, np.ndarray] = {}
    test_accuracies = []
    for fold in range(cfg.folds):
        held_out = fold_of == fold
        path = workdir / f"fold{fold}.npz"
        if not path.exists():
            fitted = fit_run(
                data["images"][~held_out], data["given_label"][~held_out],
                num_classes=data["num_classes"], keys=_run_keys(base_key, fold),
                tag=f"fold{fold}",
            )  # fmt: skip
            out = fitted.evaluate(
                fitted.state, data["images"][held_out], data["given_label"][held_out]
            )
            out["test_accuracy"] = np.float64(fitted.test_accuracy)
            atomic_write(path, lambda f, out=out: np.savez(f, **out), mode="wb")
            barrier(f"fold{fold} written")
        else:
            log(f"fold {fold}: outputs found in {path}, not re-trained")
        with np.load(path) as saved:
            test_accuracies.append(float(saved["test_accuracy"]))
            for name in ("logits", "probs", "p_t", "margin", "pred", "weight"):
                if name not in parts:
                    parts[name] = np.zeros((num_train, *saved[name].shape[1:]), saved[name].dtype)
                parts[name][held_out] = saved[name]  # Back in canonical order.
    predictions = _predictions(parts, data)
    predictions["fold"] = fold_of
    is_flagged, score = detection.confident_learning(
        data["given_label"], parts["probs"], filter_by=cfg.cl_filter_by
    )
    predictions["is_flagged_cl"] = is_flagged
    predictions["cl_score"] = score  # Self-confidence: 1 - out-of-sample p_t.
    extra = {
        "confident_learning": {
            **metrics.detection_metrics(data["is_corrupted"], is_flagged),
            "filter_by": cfg.cl_filter_by,
        },
        "test_accuracy_per_fold": test_accuracies,
        "test_accuracy": float(np.mean(test_accuracies)),
    }
    return predictions, extra


def _area_under_margin(cfg, data, fit_run, base_key) -> tuple[dict, dict]:
    """AUM: two runs, each with its own N/(C+1) threshold examples moved to a fake class C."""
    num_classes = data["num_classes"]
    runs = detection.assign_threshold_examples(
        jax.random.fold_in(base_key, 5), data["given_label"], num_classes, num_runs=2
    )
    aums, thresholds, outs, test_accuracies = [], [], [], []
    for run, (is_threshold, threshold_labels) in enumerate(runs):
        fitted = fit_run(
            data["images"], threshold_labels, num_classes=num_classes + 1,
            keys=_run_keys(base_key, 100 + run), tag=f"aum{run}",
        )  # fmt: skip
        aums.append(np.asarray(detection.aum_scores(fitted.aum_sum, fitted.aum_count)))
        thresholds.append(is_threshold)
        test_accuracies.append(fitted.test_accuracy)
        # Per-example outputs over the real classes only, for the given labels.
        out = fitted.evaluate(fitted.state, data["images"], threshold_labels)
        outs.append((out, is_threshold))
    is_flagged, score = detection.aum_detect(aums, thresholds, percentile=cfg.aum_percentile)
    # The outputs of the run in which each example was not a threshold example (run 0 if neither).
    out0, thr0 = outs[0]
    out1, _ = outs[1]
    logits = np.where(thr0[:, None], out1["logits"], out0["logits"])[:, :num_classes]
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    labels = data["given_label"]
    p_t = probs[np.arange(len(labels)), labels]
    margin = np.asarray(detection.margins(logits, labels))
    weight = np.where(thr0, out1["weight"], out0["weight"])
    out = {"probs": probs, "p_t": p_t, "margin": margin, "pred": logits.argmax(-1),
           "weight": weight}  # fmt: skip
    predictions = _predictions(out, data)
    predictions.update(aum=np.where(thr0, aums[1], aums[0]), aum_score=score,
                       is_flagged_aum=is_flagged, is_threshold_run0=thr0,
                       is_threshold_run1=thresholds[1])  # fmt: skip
    finite = np.isfinite(score)
    extra = {
        "aum": {
            **metrics.detection_metrics(data["is_corrupted"], is_flagged),
            **metrics.ranking_metrics(data["is_corrupted"][finite], score[finite]),
            "percentile": cfg.aum_percentile,
        },
        "test_accuracy_per_run": test_accuracies,
        "test_accuracy": float(np.mean(test_accuracies)),
    }
    return predictions, extra


def train_and_evaluate(
    cfg: config_lib.Config,
    workdir: str | Path,
    *,
    data_dir: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    devices: list | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train on noisy labels, then score detection of the corrupted examples.

    ``cfg.detector`` picks the protocol: ``pt`` (one run; in-sample ``p_t`` from the evaluation
    pass), ``cl`` (K-fold: ``cfg.folds`` fresh models, each trained without its fold; the
    out-of-sample probabilities, in canonical order, go to Confident Learning) or ``aum`` (two
    runs with disjoint threshold-example sets; margins from every train step).

    Args:
      cfg: the run's configuration (validated here before any work).
      workdir: output directory (created).
      data_dir: tfds data directory.
      resume: continue from the latest checkpoint in ``workdir`` (and skip finished folds).
      overwrite: replace a run already in ``workdir`` (see :func:`check_workdir`).
      progress: show progress bars.
      devices: devices to run on (default: all local devices).
      log: where one-line messages go.

    Returns:
      The summary (also written to ``summary.json``).
    """
    devices = devices or jax.devices()  # Every process's, in a multi-host run.
    config_lib.validate(cfg, num_devices=len(devices))
    if not is_writer():
        log, progress = (lambda _: None), False
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_workdir(cfg, workdir, resume=resume, overwrite=overwrite)
    barrier("workdir checked")  # Before process 0 writes into it.
    if overwrite:
        clear_outputs(workdir)
    write_json(workdir / "config.json", cfg.to_json())

    data = noisy_training_data(cfg, data_dir)
    base_key = jax.random.key(cfg.seed)
    fit_run = functools.partial(
        fit, cfg, real_classes=data["num_classes"], test_images=data["test_images"],
        test_labels=data["test_labels"],
        mean=data["mean"], std=data["std"], workdir=workdir, resume=resume, progress=progress,
        devices=devices, log=log,
    )  # fmt: skip

    extra: dict[str, Any] = {}
    if cfg.detector == "cl":
        predictions, extra = _cross_validated(cfg, data, fit_run, workdir, base_key, log)
    elif cfg.detector == "aum":
        predictions, extra = _area_under_margin(cfg, data, fit_run, base_key)
    else:
        fitted = fit_run(
            data["images"], data["given_label"], num_classes=data["num_classes"],
            keys=_run_keys(base_key, None), is_corrupted=data["is_corrupted"],
        )  # fmt: skip
        # Per-example outputs on the training set, scored against the labels trained on.
        out = fitted.evaluate(
            fitted.state, data["images"], data["given_label"],
            progress=functools.partial(_tqdm, enabled=progress, desc="evaluating", leave=False),
        )  # fmt: skip
        predictions = _predictions(out, data)
        extra = {"test_accuracy": fitted.test_accuracy}
    atomic_write(
        workdir / "predictions.npz", lambda f: np.savez_compressed(f, **predictions), mode="wb"
    )
    warning = degeneracy_warning(predictions, data["num_classes"])
    if warning:
        warnings.warn(warning, stacklevel=2)
        log(f"WARNING: {warning}")
    report = corruption.noise_report(data["true_label"], data["given_label"], data["num_classes"])
    is_corrupted = data["is_corrupted"]
    detection_scores = score_detection(predictions, is_corrupted, cfg.pt_threshold)
    for name in ("confident_learning", "aum"):
        if name in extra:
            detection_scores[name] = extra.pop(name)
    summary = {
        "detector": cfg.detector,
        "test_accuracy": extra.pop("test_accuracy"),
        **extra,
        "train_accuracy_true_labels": float(np.mean(predictions["pred"] == data["true_label"])),
        "memorised_fraction": memorised_fraction(
            predictions["pred"], data["given_label"], is_corrupted
        ),
        "num_train": len(data["given_label"]),
        "num_corrupted": int(is_corrupted.sum()),
        "realised_noise_rate": float(report["realised_rate"]),
        "detection": detection_scores,
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
        + "".join(
            f"; {label} F1 {det[key]['f1']:.3f}"
            for key, label in (("confident_learning", "CL"), ("aum", "AUM"))
            if key in det
        )
    )
