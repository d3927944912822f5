"""One run end to end: noisy data, training, per-example outputs, detection scores.

``train_and_evaluate(config, workdir)`` writes to ``workdir``:

- ``config.json``: the config with defaults resolved (the delay a robust loss got, ...).
- ``metrics.jsonl``: one line per epoch (train loss, accuracy on the noisy labels, fraction of
  switched-off examples, clean test accuracy, ...).
- ``checkpoints/``: orbax checkpoints, every ``checkpoint_every`` epochs at most once per
  ``checkpoint_min_interval`` seconds and after the last, the last 3 kept; ``resume=True``
  continues from the latest.
- ``predictions.npz``: per training example in canonical order: ``p_t``, ``probs``, ``margin``,
  ``pred``, ``weight``, ``given_label``, ``true_label``, ``is_corrupted``.
- ``train_record.npz``: per epoch and training example, AUM margin sums and counts and (tracked
  runs) ``p_t``; while training, one file per epoch in ``train_record.epochs/`` (``records``).
- ``summary.json``: clean test accuracy, and for each detector precision, recall, F1, balanced
  accuracy, plus AUROC of ``1 - p_t`` and precision at k = number of corrupted examples.

Every file is written to a temporary name and renamed, so a killed run leaves no truncated file.

``train_and_evaluate_together(configs, workdirs, stack_dir)`` does the same for several runs that
differ only in seed, noise or loss hyperparameters, their models trained in one stack (the
sweep's default), each run's folder getting what it would alone.

The models themselves are trained by :func:`fit`; this module sets up the data, the
detection protocols (in-sample ``p_t``, K-fold Confident Learning, AUM) and what they write.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from robust_losses_jax import (
    config as config_lib,
)
from robust_losses_jax import (
    corruption,
    detection,
    input_pipeline,
    metrics,
)
from robust_losses_jax.records import atomic_write, is_writer, strict_json, write_json
from robust_losses_jax.training import stacking
from robust_losses_jax.training.engines import ProgramCache, uses_device_data
from robust_losses_jax.training.loop import Fitted, fit, member_steps_per_epoch
from robust_losses_jax.training.step import LOW_WEIGHT


class WorkdirError(ValueError):
    """A workdir that holds another run: ``reason`` (what is there) and ``advice`` (the flags)."""

    def __init__(self, reason: str, advice: str):
        super().__init__(f"{reason}; {advice}.")
        self.reason, self.advice = reason, advice


# --------------------------------------------------------------------------------------------------
# Multi-host outputs (written by process 0: records.is_writer).
# --------------------------------------------------------------------------------------------------


def barrier(name: str) -> None:
    """Wait for every process (multi-host) before reading what process 0 wrote."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# --------------------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------------------


def load_splits(cfg: config_lib.Config, data_dir: str | None) -> tuple[Any, Any]:
    """``(train, test)`` splits of ``cfg.dataset`` (the whole training split: see below)."""
    return (
        input_pipeline.load_split(cfg.dataset, "train", data_dir),
        input_pipeline.load_split(cfg.dataset, "test", data_dir, cfg.test_size, missing_ok=True),
    )


def noisy_training_data(
    cfg: config_lib.Config, data_dir: str | None, splits: tuple[Any, Any] | None = None
) -> dict[str, Any]:
    """The training split with corrupted labels, and the test split, as host arrays.

    Corruption is decided over the whole training split from the seed, then the first
    ``train_size`` examples are kept: the same seed gives the same flips whatever the subset.
    ``splits``: :func:`load_splits`' result, when several runs share it.
    """
    train_split, test_split = splits or load_splits(cfg, data_dir)
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
    low = float(np.mean(predictions["weight"] < LOW_WEIGHT))
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


# What a run writes into its workdir (``clear_outputs`` removes exactly these).
OUTPUT_PATTERNS = ("config.json", "metrics.jsonl", "predictions.npz", "summary.json",
                   "fold*.npz", "train_record*.npz", "train_record*.epochs", "auto_tau*.json",
                   "checkpoints", "checkpoints_*")  # fmt: skip
# Config fields a resumed run may change: they decide how long it trains, or what it logs and how
# often it checkpoints, not what it trains.
RESUMABLE_CHANGES = ("epochs", "eval_every", "checkpoint_every", "checkpoint_min_interval")


def check_workdir(
    cfg: config_lib.Config, workdir: str | Path, *, resume: bool, overwrite: bool
) -> None:
    """Refuse a workdir that holds another run, before any work (:class:`WorkdirError`).

    A workdir with a ``config.json`` is taken only with ``overwrite`` (the old run is removed),
    or with ``resume`` when the configs agree except for :data:`RESUMABLE_CHANGES`.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other; pass one.")
    path = Path(workdir) / "config.json"
    if overwrite or not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise WorkdirError(
            f"{path} is unreadable ({error})", "pass --overwrite to replace it"
        ) from None
    new = cfg.to_json()
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not resume:
        raise WorkdirError(
            f"workdir {workdir} already holds a run",
            "pass --resume to continue it or --overwrite to replace it",
        )
    blocking = [k for k in differ if k not in RESUMABLE_CHANGES]
    if blocking:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in blocking)
        raise WorkdirError(
            f"workdir {workdir} holds a run with a different config ({changes})",
            "--resume only continues the same run (epochs, eval/checkpoint frequency may "
            "change); use another --workdir "
            "or --overwrite",
        )


def clear_outputs(workdir: Path) -> None:
    """Remove a previous run's outputs from ``workdir`` (nothing else; process 0 only)."""
    import shutil

    if not is_writer():
        return
    for pattern in OUTPUT_PATTERNS:
        for path in Path(workdir).glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def fold_assignment(key: jax.Array, num_examples: int, folds: int) -> np.ndarray:
    """``[N]`` int: the fold (0..folds-1) of each example, near-equal sizes, from ``key`` only."""
    order = np.asarray(jax.random.permutation(key, num_examples))
    fold_of = np.empty(num_examples, np.int32)
    fold_of[order] = np.arange(num_examples) % folds
    return fold_of


def cross_validation_folds(base_key: jax.Array, num_examples: int, folds: int) -> np.ndarray:
    """``[N]``: the fold of each example in the K-fold protocol of a run whose key is ``base_key``
    (``jax.random.key(seed)``); what :func:`cross_validated` uses, for references to reuse."""
    return fold_assignment(jax.random.fold_in(base_key, 4), num_examples, folds)


def _run_keys(base_key: jax.Array, run: int | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(init, step, order)`` keys; run ``None`` is the single in-sample run."""
    keys = tuple(jax.random.fold_in(base_key, i) for i in (1, 2, 3))
    if run is None:
        return keys
    return tuple(jax.random.fold_in(k, 1000 + run) for k in keys)


def _loss_hparams(cfg: config_lib.Config) -> dict[str, float]:
    return {k: float(v) for k, v in cfg.to_json()["loss_hparams"].items()}


def fit_members(
    cfg: config_lib.Config,
    fit_run: Callable[..., Fitted],
    images: np.ndarray,
    members: list[stacking.Member],
    *,
    stack_tag: str,
    log: Callable[[str], None],
    **kwargs: Any,
) -> list[tuple[Fitted, int]]:
    """Train ``members``: vmapped together in one stack, or one after another.

    One after another with ``cfg.sequential``, with streamed data, or when the members'
    steps per epoch differ (folds of unequal size across a batch boundary). Returns, per member,
    the :class:`Fitted` stack that holds it and its position there.
    """
    steps = member_steps_per_epoch(members, cfg.batch_size)
    together = not cfg.sequential and uses_device_data(cfg) and len(members) > 1
    if together and len(steps) > 1:
        log(f"{stack_tag}: steps per epoch differ ({sorted(steps)}); training one at a time")
        together = False
    if together:
        fitted = fit_run(images, members, tag=stack_tag, **kwargs)
        return [(fitted, i) for i in range(len(members))]
    return [(fit_run(images, [m], tag=m.tag, **kwargs), 0) for m in members]


def by_stack(trained: list[tuple[Fitted, int]]) -> list[tuple[Fitted, dict[int, int]]]:
    """:func:`fit_members`' result grouped by stack: ``(fitted, {member index: position})``."""
    stacks: dict[int, tuple[Fitted, dict[int, int]]] = {}
    for j, (fitted, i) in enumerate(trained):
        stacks.setdefault(id(fitted), (fitted, {}))[1][j] = i
    return list(stacks.values())


def _training_outputs(fitted: Fitted, position: int) -> dict[str, np.ndarray]:
    """One member's outputs on every training row, against its own labels."""
    return {k: v[position] for k, v in fitted.training_outputs().items()}


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


OUT_OF_SAMPLE = ("logits", "probs", "p_t", "margin", "pred", "weight")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A run's detection protocol, set up: the models it still needs and what it makes of them.

    Attributes:
      members: the models to train (fewer than the protocol's when an interrupted run saved
        some: a finished fold is not trained again).
      fit_kwargs: what :func:`fit` needs besides (``num_classes``, ``is_corrupted``).
      finish: ``trained -> (predictions, extra)``, given per member the :class:`Fitted` stack
        that holds it and its position there (:func:`fit_members`' result). The stack may hold
        other runs' models too (a sweep trains several runs' models together).
      stack_tag: the name of the members' stack when the run trains them alone.
    """

    members: list[stacking.Member]
    fit_kwargs: dict[str, Any]
    finish: Callable[[list[tuple[Fitted, int]]], tuple[dict, dict]]
    stack_tag: str


def in_sample(cfg, data, base_key) -> Protocol:
    """``pt``: one model on every example; in-sample outputs, ``p_t`` tracked in tested epochs."""
    given = data["given_label"]
    member = stacking.Member(
        labels=given, rows=np.arange(len(given)), keys=_run_keys(base_key, None),
        hparams=_loss_hparams(cfg),
    )  # fmt: skip

    def finish(trained):
        ((fitted, position),) = trained
        predictions = _predictions(_training_outputs(fitted, position), data)
        return predictions, {"test_accuracy": fitted.test_accuracy[position]}

    kwargs = {"num_classes": data["num_classes"], "is_corrupted": data["is_corrupted"][None]}
    return Protocol([member], kwargs, finish, stack_tag="")


def cross_validated_protocol(cfg, data, workdir: Path, base_key, log) -> Protocol:
    """K-fold out-of-sample outputs: each fold's rows from a fresh model trained on the others.

    Each fold's outputs are saved to ``fold{k}.npz``, so a resumed run does not train a finished
    fold again. Each fold's model evaluates only its fold's rows; when the K models are one stack
    of their own, together, the outputs put in canonical order on the devices.
    """
    given = data["given_label"]
    num_train = len(given)
    fold_of = cross_validation_folds(base_key, num_train, cfg.folds)
    paths = [workdir / f"fold{k}.npz" for k in range(cfg.folds)]
    missing = [k for k, path in enumerate(paths) if not path.exists()]
    for k in sorted(set(range(cfg.folds)) - set(missing)):
        log(f"fold {k}: outputs found in {paths[k]}, not re-trained")
    members = [
        stacking.Member(
            labels=given,
            rows=np.flatnonzero(fold_of != k),
            keys=_run_keys(base_key, k),
            hparams=_loss_hparams(cfg),
            tag=f"fold{k}",
        )
        for k in missing
    ]

    def fold_outputs(fitted: Fitted, position: dict[int, int]) -> dict[int, dict]:
        """``{fold: outputs on its rows}`` of this run's members in one stack (by fold)."""
        if len(position) == 1 and len(fitted.test_accuracy) == 1:  # A lone model: its fold.
            ((k, _),) = position.items()
            held_out = fold_of == k
            out = fitted.outputs(data["images"][held_out], given[None, held_out])
            return {k: {name: v[0] for name, v in out.items()}}
        if len(position) == len(fitted.test_accuracy):  # The stack is this run's folds.
            member_of_row = np.full(num_train, -1, np.int32)  # Finished folds: no member.
            for k, i in position.items():
                member_of_row[fold_of == k] = i
            labels = np.broadcast_to(given, (len(position), num_train))
            out = fitted.outputs(data["images"], labels, member_of_row)
            return {k: {n: v[fold_of == k] for n, v in out.items()} for k in position}
        # Other runs' models in the stack too (a sweep): every member of the stack on its own
        # held-out rows, in one evaluation shared by the runs.
        held_out = fitted.held_out_outputs()
        return {k: held_out[i] for k, i in position.items()}

    def finish(trained):
        for fitted, member_position in by_stack(trained):
            position = {missing[j]: i for j, i in member_position.items()}  # By fold.
            for k, out in fold_outputs(fitted, position).items():
                out = {n: out[n] for n in OUT_OF_SAMPLE}
                out["test_accuracy"] = np.float64(fitted.test_accuracy[position[k]])
                atomic_write(paths[k], lambda f, o=out: np.savez(f, **o), mode="wb")
        barrier("folds written")
        parts: dict[str, np.ndarray] = {}
        test_accuracies = []
        for k, path in enumerate(paths):
            held_out = fold_of == k
            with np.load(path) as saved:
                test_accuracies.append(float(saved["test_accuracy"]))
                for name in OUT_OF_SAMPLE:
                    if name not in parts:
                        shape = (num_train, *saved[name].shape[1:])
                        parts[name] = np.zeros(shape, saved[name].dtype)
                    parts[name][held_out] = saved[name]  # Back in canonical order.
        predictions = _predictions(parts, data)
        predictions["fold"] = fold_of
        is_flagged, score = detection.confident_learning(
            given, parts["probs"], filter_by=cfg.cl_filter_by
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

    return Protocol(members, {"num_classes": data["num_classes"]}, finish, stack_tag="folds")


def cross_validated(cfg, data, fit_run, workdir: Path, base_key, log) -> tuple[dict, dict]:
    """:func:`cross_validated_protocol`, trained: the K models in one stack unless
    ``cfg.sequential``. Returns ``(predictions, extra)``."""
    protocol = cross_validated_protocol(cfg, data, workdir, base_key, log)
    return run_protocol(cfg, data, fit_run, protocol, log)


def area_under_margin_protocol(cfg, data, base_key) -> Protocol:
    """AUM: two runs, each with its own N/(C+1) threshold examples moved to a fake class C.

    ``cfg.aum_rule``: ``"reference"`` (asappresearch/aum) flags an example when both runs that
    judge it flag it and leaves the first epoch's margins out; ``"mean"`` averages the runs'
    ``threshold - AUM`` and counts every epoch (:func:`detection.aum_detect`).
    """
    num_classes = data["num_classes"]
    num_train = len(data["given_label"])
    runs = detection.assign_threshold_examples(
        jax.random.fold_in(base_key, 5), data["given_label"], num_classes, num_runs=2
    )
    members = [
        stacking.Member(
            labels=np.asarray(threshold_labels),
            rows=np.arange(num_train),
            keys=_run_keys(base_key, 100 + run),
            hparams=_loss_hparams(cfg),
            tag=f"aum{run}",
        )
        for run, (_, threshold_labels) in enumerate(runs)
    ]

    def finish(trained):
        aums = [
            np.asarray(detection.aum_scores(fitted.aum_sum[i], fitted.aum_count[i]))
            for fitted, i in trained
        ]
        thresholds = [np.asarray(is_threshold) for is_threshold, _ in runs]
        test_accuracies = [fitted.test_accuracy[i] for fitted, i in trained]
        # Per-example outputs over the real classes only, for the given labels.
        outs = [_training_outputs(fitted, i) for fitted, i in trained]
        is_flagged, score = detection.aum_detect(
            aums, thresholds, percentile=cfg.aum_percentile, rule=cfg.aum_rule
        )
        # The outputs of the run in which each example was not a threshold example (run 0 if
        # neither).
        thr0 = thresholds[0]
        logits = np.where(thr0[:, None], outs[1]["logits"], outs[0]["logits"])[:, :num_classes]
        probs = np.asarray(jax.nn.softmax(logits, axis=-1))
        labels = data["given_label"]
        p_t = probs[np.arange(len(labels)), labels]
        margin = np.asarray(detection.margins(logits, labels))
        weight = np.where(thr0, outs[1]["weight"], outs[0]["weight"])
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
                "rule": cfg.aum_rule,
            },
            "test_accuracy_per_run": test_accuracies,
            "test_accuracy": float(np.mean(test_accuracies)),
        }
        return predictions, extra

    # The reference leaves the first epoch's margins out (they mostly reflect initialisation).
    kwargs = {"num_classes": num_classes + 1, "aum_from_epoch": int(cfg.aum_rule == "reference")}
    return Protocol(members, kwargs, finish, stack_tag="aum")


def protocol_for(cfg, data, workdir: Path, base_key, log) -> Protocol:
    """The protocol ``cfg.detector`` names, set up for this run."""
    if cfg.detector == "cl":
        return cross_validated_protocol(cfg, data, workdir, base_key, log)
    if cfg.detector == "aum":
        return area_under_margin_protocol(cfg, data, base_key)
    return in_sample(cfg, data, base_key)


def run_protocol(cfg, data, fit_run, protocol: Protocol, log) -> tuple[dict, dict]:
    """Train a protocol's models (:func:`fit_members`) and finish it."""
    trained = []
    if protocol.members:
        trained = fit_members(
            cfg, fit_run, data["images"], protocol.members, stack_tag=protocol.stack_tag,
            log=log, **protocol.fit_kwargs,
        )  # fmt: skip
    return protocol.finish(trained)


def _start_run(cfg, workdir: Path, *, resume: bool, overwrite: bool, num_devices: int) -> None:
    """Validate, check the workdir (nothing written before), then write ``config.json``."""
    config_lib.validate(cfg, num_devices=num_devices)
    workdir.mkdir(parents=True, exist_ok=True)
    check_workdir(cfg, workdir, resume=resume, overwrite=overwrite)
    barrier("workdir checked")  # Before process 0 writes into it.
    if overwrite:
        clear_outputs(workdir)
    write_json(workdir / "config.json", cfg.to_json())


def _fit_run(cfg, data, workdir: Path, *, resume, progress, devices, log, cache=None) -> Callable:
    return functools.partial(
        fit, cfg, real_classes=data["num_classes"], test_images=data["test_images"],
        test_labels=data["test_labels"], mean=data["mean"], std=data["std"], workdir=workdir,
        resume=resume, progress=progress, devices=devices, log=log,
        cache=cache or ProgramCache(),
    )  # fmt: skip


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
    splits: tuple[input_pipeline.Split, input_pipeline.Split] | None = None,
    cache: ProgramCache | None = None,
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
      splits: ``(train, test)`` already loaded (arrays in memory, a folder read once); default:
        ``cfg.dataset``'s.
      cache: models and compiled programs shared with other runs in this process (a sweep's);
        default: the run's own, shared by its models (sequential folds compile once).

    Returns:
      The summary (also written to ``summary.json``).
    """
    devices = devices or jax.devices()  # Every process's, in a multi-host run.
    if not is_writer():
        log, progress = (lambda _: None), False
    workdir = Path(workdir)
    _start_run(cfg, workdir, resume=resume, overwrite=overwrite, num_devices=len(devices))
    data = noisy_training_data(cfg, data_dir, splits)
    fit_run = _fit_run(cfg, data, workdir, resume=resume, progress=progress, devices=devices,
                       log=log, cache=cache)  # fmt: skip
    protocol = protocol_for(cfg, data, workdir, jax.random.key(cfg.seed), log)
    predictions, extra = run_protocol(cfg, data, fit_run, protocol, log)
    return summarise(cfg, workdir, data, predictions, extra, num_devices=len(devices), log=log)


# Config fields that may differ between runs trained in one stack: they reach the models only
# through their labels, keys and traced loss hyperparameters.
STACKABLE_FIELDS = ("seed", "noise_rate", "noise_kind", "transition", "loss_hparams")


def stack_key(cfg: config_lib.Config) -> str:
    """Runs with equal keys can train their models in one stack (see :data:`STACKABLE_FIELDS`)."""
    fields = {k: v for k, v in cfg.to_json().items() if k not in STACKABLE_FIELDS}
    fields["loss_hparam_names"] = sorted(cfg.to_json()["loss_hparams"])
    return json.dumps(fields, sort_keys=True, default=str)


def can_stack_runs(cfg: config_lib.Config) -> bool:
    """Whether this run's models may join a stack with other runs' (and its own folds')."""
    return not cfg.sequential and uses_device_data(cfg) and jax.process_count() == 1


def train_and_evaluate_together(
    cfgs: list[config_lib.Config],
    workdirs: list[str | Path],
    stack_dir: str | Path,
    *,
    data_dir: str | None = None,
    progress: bool = True,
    devices: list | None = None,
    log: Callable[[str], None] = print,
    cache: ProgramCache | None = None,
) -> list[dict[str, Any]]:
    """Several runs whose models train in one stack: e.g. seeds x ``gamma`` values of a sweep.

    Each run is what :func:`train_and_evaluate` with ``resume=True`` makes of it, in its own
    workdir (``config.json``, ``metrics.jsonl``, training records, folds, predictions,
    summary), up to float rounding; the stack's checkpoints go to ``stack_dir`` (the same runs
    again resume from them). The runs must agree on everything but :data:`STACKABLE_FIELDS`
    (:func:`stack_key`) and hold their data on the devices; when their models' steps per epoch
    differ (K-fold folds across a batch boundary), each run trains on its own.

    ``cache``: as :func:`train_and_evaluate`'s.

    Returns:
      The runs' summaries.
    """
    devices = devices or jax.devices()
    cache = cache or ProgramCache()
    if len(cfgs) != len(workdirs) or not cfgs:
        raise ValueError(f"{len(cfgs)} configs for {len(workdirs)} workdirs; pass one per run.")
    if len({stack_key(c) for c in cfgs}) > 1:
        raise ValueError(
            "runs in one stack may differ only in " + ", ".join(STACKABLE_FIELDS) + "."
        )
    if not all(can_stack_runs(c) for c in cfgs):
        raise ValueError("stacked runs need their data on the devices, one process, and no "
                         "--sequential.")  # fmt: skip
    workdirs = [Path(w) for w in workdirs]
    for cfg, workdir in zip(cfgs, workdirs, strict=True):
        _start_run(cfg, workdir, resume=True, overwrite=False, num_devices=len(devices))
    splits = load_splits(cfgs[0], data_dir)  # One load: the runs share dataset and sizes.
    datas = [noisy_training_data(cfg, data_dir, splits) for cfg in cfgs]
    protocols = [
        protocol_for(cfg, data, workdir, jax.random.key(cfg.seed), log)
        for cfg, data, workdir in zip(cfgs, datas, workdirs, strict=True)
    ]
    members, record_dirs, owner = [], [], []
    for r, (protocol, workdir) in enumerate(zip(protocols, workdirs, strict=True)):
        members += protocol.members
        record_dirs += [workdir] * len(protocol.members)
        owner += [r] * len(protocol.members)
    steps = member_steps_per_epoch(members, cfgs[0].batch_size)
    if len(steps) > 1:  # Folds across a batch boundary: each run on its own, as it would alone.
        log(f"steps per epoch differ ({sorted(steps)}); training the runs one after another")
        results = [
            run_protocol(cfg, data, _fit_run(cfg, data, workdir, resume=True, progress=progress,
                                             devices=devices, log=log, cache=cache), protocol, log)
            for cfg, data, workdir, protocol in zip(cfgs, datas, workdirs, protocols, strict=True)
        ]  # fmt: skip
    else:
        trained: list[tuple[Fitted, int]] = []
        if members:
            kwargs = dict(protocols[0].fit_kwargs)
            if "is_corrupted" in kwargs:  # Each member tracked against its own run's corruption.
                kwargs["is_corrupted"] = np.concatenate(
                    [p.fit_kwargs["is_corrupted"] for p in protocols if p.members]
                )
            fit_run = _fit_run(cfgs[0], datas[0], Path(stack_dir), resume=True,
                               progress=progress, devices=devices, log=log,
                               cache=cache)  # fmt: skip
            fitted = fit_run(datas[0]["images"], members, tag="stack", record_dirs=record_dirs,
                             **kwargs)  # fmt: skip
            trained = [(fitted, i) for i in range(len(members))]
        results = [
            protocol.finish([t for t, o in zip(trained, owner, strict=True) if o == r])
            for r, protocol in enumerate(protocols)
        ]
    return [
        summarise(cfg, workdir, data, predictions, extra, num_devices=len(devices), log=log)
        for cfg, workdir, data, (predictions, extra) in zip(
            cfgs, workdirs, datas, results, strict=True
        )
    ]


def summarise(cfg, workdir: Path, data, predictions, extra, *, num_devices: int, log) -> dict:
    """Write ``predictions.npz`` and ``summary.json`` (detection scores, test accuracy, ...)."""
    extra = dict(extra)
    atomic_write(
        workdir / "predictions.npz", lambda f: np.savez_compressed(f, **predictions), mode="wb"
    )
    warning = degeneracy_warning(predictions, data["num_classes"])
    if warning:
        warnings.warn(warning, stacklevel=3)
        log(f"WARNING: {warning}")
    report = corruption.noise_report(data["true_label"], data["given_label"], data["num_classes"])
    is_corrupted = data["is_corrupted"]
    detection_scores = score_detection(predictions, is_corrupted, cfg.pt_threshold)
    for name in ("confident_learning", "aum"):
        if name in extra:
            detection_scores[name] = extra.pop(name)
    injected = bool(is_corrupted.any())
    if not injected:  # Nothing injected: no ground truth to score the flags against.
        detection_scores = {
            name: {"num_flagged": scores["num_flagged"]}
            for name, scores in detection_scores.items()
            if "num_flagged" in scores
        }
    summary = {
        "detector": cfg.detector,
        "test_accuracy": extra.pop("test_accuracy"),
        **extra,
        "train_accuracy_true_labels": float(np.mean(predictions["pred"] == data["true_label"])),
        # Of no corrupted examples it is undefined.
        "memorised_fraction": metrics.memorised_fraction(
            predictions["pred"], data["given_label"], is_corrupted
        )
        if injected
        else None,
        "num_train": len(data["given_label"]),
        "num_corrupted": int(is_corrupted.sum()),
        "realised_noise_rate": float(report["realised_rate"]),
        "detection": detection_scores,
        "degenerate": warning,
        "epochs": cfg.epochs,
        "devices": num_devices,
    }
    summary = strict_json(summary)  # NaN (undefined) values are None, as in the file.
    write_json(workdir / "summary.json", summary)
    return summary


def one_line_summary(cfg: config_lib.Config, summary: dict[str, Any]) -> str:
    det = summary["detection"]
    test = summary["test_accuracy"]
    test_text = "no test split" if test is None else f"test acc {test:.4f}"
    if not summary["num_corrupted"]:
        flagged = ", ".join(f"{name} {scores['num_flagged']}" for name, scores in det.items())
        return (
            f"{cfg.loss} {cfg.loss_hparams or ''} on {cfg.dataset}: {test_text}; no injected "
            f"label errors to score against (--noise-rate=0); flagged of "
            f"{summary['num_train']}: {flagged}"
        )
    return (
        f"{cfg.loss} {cfg.loss_hparams or ''} on {cfg.dataset} ({cfg.noise_kind} "
        f"{cfg.noise_rate:g}): {test_text}; detection F1 "
        f"argmax!=given {det['argmax_neq_given']['f1']:.3f}, "
        f"p_t<{cfg.pt_threshold:g} {det[f'pt_below_{cfg.pt_threshold:g}']['f1']:.3f}; "
        f"AUROC {det['ranking_1_minus_pt']['auroc']:.3f}"
        + "".join(
            f"; {label} F1 {det[key]['f1']:.3f}"
            for key, label in (("confident_learning", "CL"), ("aum", "AUM"))
            if key in det
        )
    )
