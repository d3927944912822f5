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

The run's data comes from :mod:`noisy_data`, its models and what it makes of them from the
detection protocol its detector names (:mod:`protocols`: in-sample ``p_t``, K-fold Confident
Learning, AUM), and the models are trained by :func:`training.loop.fit`; this module checks the
workdir, runs the protocol and scores and writes what it gives.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax import corruption, detection, input_pipeline, metrics, noisy_data, protocols
from robust_losses_jax.noisy_data import NoisyData
from robust_losses_jax.protocols.base import run_protocol
from robust_losses_jax.records import atomic_write, barrier, is_writer, strict_json, write_json
from robust_losses_jax.training import auto_tau
from robust_losses_jax.training.engines import ProgramCache, uses_device_data
from robust_losses_jax.training.loop import FitContext, Fitted, fit, member_steps_per_epoch
from robust_losses_jax.training.step import LOW_WEIGHT


class WorkdirError(ValueError):
    """A workdir that holds another run: ``reason`` (what is there) and ``advice`` (the flags)."""

    def __init__(self, reason: str, advice: str):
        super().__init__(f"{reason}; {advice}.")
        self.reason, self.advice = reason, advice


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
                   "fold*.npz", "train_record*.npz", "train_record*.epochs", auto_tau.FILE_PATTERN,
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
    if not is_writer():
        return
    for pattern in OUTPUT_PATTERNS:
        for path in Path(workdir).glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _start_run(cfg, workdir: Path, *, resume: bool, overwrite: bool, num_devices: int) -> None:
    """Validate, check the workdir (nothing written before), then write ``config.json``."""
    protocols.validate(cfg, num_devices=num_devices)
    workdir.mkdir(parents=True, exist_ok=True)
    check_workdir(cfg, workdir, resume=resume, overwrite=overwrite)
    barrier("workdir checked")  # Before process 0 writes into it.
    if overwrite:
        clear_outputs(workdir)
    write_json(workdir / "config.json", cfg.to_json())


def _fit_run(cfg: config_lib.Config, data: NoisyData, context: FitContext) -> Callable:
    """:func:`training.loop.fit` of this run's data and context: ``stack -> Fitted``."""
    return functools.partial(fit, cfg, data, context=context)


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
    data = noisy_data.noisy_training_data(cfg, data_dir, splits)
    context = FitContext(workdir, devices, resume=resume, progress=progress, log=log,
                         cache=cache or ProgramCache())  # fmt: skip
    protocol = protocols.protocol_for(cfg, data, workdir, jax.random.key(cfg.seed), log)
    predictions, extra = run_protocol(cfg, _fit_run(cfg, data, context), protocol, log)
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
    splits = noisy_data.load_splits(cfgs[0], data_dir)  # One load: the runs share the dataset.
    datas = [noisy_data.noisy_training_data(cfg, data_dir, splits) for cfg in cfgs]
    run_protocols = [
        protocols.protocol_for(cfg, data, workdir, jax.random.key(cfg.seed), log)
        for cfg, data, workdir in zip(cfgs, datas, workdirs, strict=True)
    ]
    context = FitContext(Path(stack_dir), devices, resume=True, progress=progress, log=log,
                         cache=cache)  # fmt: skip
    members = [m for protocol in run_protocols for m in protocol.members]
    steps = member_steps_per_epoch(members, cfgs[0].batch_size)
    if len(steps) > 1:  # Folds across a batch boundary: each run on its own, as it would alone.
        log(f"steps per epoch differ ({sorted(steps)}); training the runs one after another")
        each = zip(cfgs, datas, workdirs, run_protocols, strict=True)
        results = [
            run_protocol(cfg, _fit_run(cfg, data, dataclasses.replace(context, workdir=workdir)),
                         protocol, log)
            for cfg, data, workdir, protocol in each
        ]  # fmt: skip
    else:
        results = _train_runs_together(cfgs[0], datas[0], run_protocols, workdirs, context)
    return [
        summarise(cfg, workdir, data, predictions, extra, num_devices=len(devices), log=log)
        for cfg, workdir, data, (predictions, extra) in zip(
            cfgs, workdirs, datas, results, strict=True
        )
    ]


def _train_runs_together(
    cfg: config_lib.Config, data: NoisyData, run_protocols: list[protocols.Protocol],
    workdirs: list[Path], context: FitContext,
) -> list[tuple[dict, dict]]:  # fmt: skip
    """Every run's members in one stack (``cfg``, ``data``: the first run's; the runs differ
    only in what reaches the models through their labels, keys and hyperparameters); each run
    finished on its own members. Returns each run's ``(predictions, extra)``."""
    members, record_dirs, owner = [], [], []
    for r, (protocol, workdir) in enumerate(zip(run_protocols, workdirs, strict=True)):
        members += protocol.members
        record_dirs += [workdir] * len(protocol.members)
        owner += [r] * len(protocol.members)
    trained: list[tuple[Fitted, int]] = []
    if members:
        tracked = [p.stack.is_corrupted for p in run_protocols if p.members]
        stack = dataclasses.replace(
            run_protocols[0].stack, members=members, tag="stack", record_dirs=record_dirs,
            # Each member tracked against its own run's corruption.
            is_corrupted=None if tracked[0] is None else np.concatenate(tracked),
        )  # fmt: skip
        fitted = fit(cfg, data, stack, context)
        trained = [(fitted, i) for i in range(len(members))]
    return [
        protocol.finish([t for t, o in zip(trained, owner, strict=True) if o == r])
        for r, protocol in enumerate(run_protocols)
    ]


def summarise(cfg, workdir: Path, data, predictions, extra, *, num_devices: int, log) -> dict:
    """Write ``predictions.npz`` and ``summary.json`` (detection scores, test accuracy, ...)."""
    extra = dict(extra)
    atomic_write(
        workdir / "predictions.npz", lambda f: np.savez_compressed(f, **predictions), mode="wb"
    )
    warning = degeneracy_warning(predictions, data.num_classes)
    if warning:
        warnings.warn(warning, stacklevel=3)
        log(f"WARNING: {warning}")
    report = corruption.noise_report(data.true_label, data.given_label, data.num_classes)
    is_corrupted = data.is_corrupted
    detection_scores = score_detection(predictions, is_corrupted, cfg.pt_threshold)
    scores = protocols.detector(cfg.detector).scores
    if scores and scores[0] in extra:  # The detector's own, from its protocol.
        detection_scores[scores[0]] = extra.pop(scores[0])
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
        "train_accuracy_true_labels": float(np.mean(predictions["pred"] == data.true_label)),
        # Of no corrupted examples it is undefined.
        "memorised_fraction": metrics.memorised_fraction(
            predictions["pred"], data.given_label, is_corrupted
        )
        if injected
        else None,
        "num_train": len(data.given_label),
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
    scores = protocols.detector(cfg.detector).scores  # The detector's own: "; CL F1 0.812".
    own = f"; {scores[1]} F1 {det[scores[0]]['f1']:.3f}" if scores and scores[0] in det else ""
    return (
        f"{cfg.loss} {cfg.loss_hparams or ''} on {cfg.dataset} ({cfg.noise_kind} "
        f"{cfg.noise_rate:g}): {test_text}; detection F1 "
        f"argmax!=given {det['argmax_neq_given']['f1']:.3f}, "
        f"p_t<{cfg.pt_threshold:g} {det[f'pt_below_{cfg.pt_threshold:g}']['f1']:.3f}; "
        f"AUROC {det['ranking_1_minus_pt']['auroc']:.3f}" + own
    )
