"""Find the label errors in your own dataset: one model trained with a robust loss, or K folds.

    robust-losses find-errors --dataset=npz:my_data.npz --workdir=workdir/audit
    robust-losses find-errors --dataset=folder:path/to/class_folders --model=resnet18
    robust-losses find-errors --dataset=fashion_mnist       # a tfds dataset's own labels
    robust-losses find-errors --dataset=npz:my_data.npz --pred-probs=probs.npy

By default (``--detector=pt --loss=gce --epochs=10``) it trains one model with the gce loss,
which learns the clean labels and barely the wrong ones, flags every example whose given label
it disputes (predicts another class) and ranks all by their probability of the given label.
``--detector=cl`` trains ``--folds`` fresh models instead (stacked: one compiled program), each
without its fold, and flags by Confident Learning on the out-of-sample probabilities: K-1
times the compute (4 at 5 folds), and it flagged worse on the measured settings (the
``--help`` epilog and docs/detection.md).
The runner's flags all apply (``robust-losses run --help``); the defaults here differ: nothing
injected (``--noise-rate=0``), every example (``--train-size=0``), and the three above (see
``robust_losses_jax.audit.AUDIT_DEFAULTS``); a ``--preset`` overrides them, the flags typed
override both. The last lines say how well the model fits the given labels (in-sample, and held
out: a tenth of the given labels without a test split (``--holdout``), the test split, or the
out-of-fold predictions) and warn (``warning:``) where the flags
cannot be trusted.

Writes into ``--workdir``: ``label_issues.csv`` (one row per example, most suspect first;
cleanlab's column names), ``pred_probs.npy`` (``[N, C]``: in-sample for ``pt``, out-of-sample
for ``cl``), ``label_issues.png`` (the top suspects), ``noise_matrix.csv`` and
``noise_matrix.png`` (P(given label | true label), cleanlab's estimate and orientation: each
column sums to 1), ``summary.json`` (with the most frequent given -> suggested pairs among the
flagged, also printed), and the run's own files (``config.json``, ``predictions.npz``, fold
outputs, checkpoints: ``--resume`` continues a killed audit). Bad input: one ``error:`` line,
exit code 2, nothing written.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from robust_losses_jax.commands import cli, run

CONFUSED_PAIRS_SHOWN = 5  # Given -> suggested class pairs on stdout and in summary.json.

# Measured: docs/detection.md ("Which detector") has the commands and the versions.
WHICH_DETECTOR = (
    "Which detector: the default (--detector=pt --loss=gce) beat 5-fold "
    "Confident Learning at every noise setting measured (F1 .680/.884/.669 against "
    ".499/.790/.625 at 5%, 20% symmetric and 20% asymmetric noise, 3,000 Fashion-MNIST "
    "images, 3 seeds) with a quarter of the training, and on all 60,000 with 7,200 errors "
    "planted between confusable classes it took 637 s on 2 CPU cores at F1 .777. Use "
    "--detector=cl (K folds, Confident Learning on out-of-sample probabilities) when the "
    "audit warns that the model memorised its labels, or to get out-of-sample probabilities."
)


def build_parser() -> cli.ConfigParser:
    """The runner's flags with the audit's defaults (``audit.AUDIT_DEFAULTS``; a ``--preset``
    and the flags typed override them), and the audit's own."""
    from robust_losses_jax import audit, retrain

    parser = run.build_parser()
    parser.prog = "robust-losses find-errors"
    parser.description = __doc__.splitlines()[0]
    parser.epilog = WHICH_DETECTOR
    defaults = {k: v for k, v in audit.AUDIT_DEFAULTS.items() if k != "loss_hparams"}
    parser.set_defaults(**defaults, workdir="workdir/find_errors")
    # build_config adds the hyperparameters when the loss is the audit's own.
    for name, value in audit.AUDIT_DEFAULTS["loss_hparams"].items():
        parser.flag(name).none = f"{value} with --loss={defaults['loss']}, else the loss's own"
    cli.add_flag(
        parser.groups["data"],
        "--pred-probs",
        default=None,
        help="a .npy of out-of-sample probabilities [N, C] (rows in the dataset's order, each "
        "summing to 1): rank them instead of training",
        none="train the folds",
    )
    cli.add_flag(
        parser.groups["detection"],
        "--retrain",
        action="store_true",
        help="after the audit, train fresh models on all the given labels and on the cleaned "
        "set, and compare their test accuracy (the test split, else the held-out slice)",
    )
    cli.add_flag(
        parser.groups["detection"],
        "--retrain-mode",
        default="drop",
        allowed=retrain.RETRAIN_MODES,
        help="drop the flagged examples, or relabel those whose suggested class has probability "
        f">= {retrain.RELABEL_MIN_PROB} (dropping the rest)",
    )
    cli.add_flag(
        parser.groups["detection"],
        "--retrain-loss",
        default="ce",
        help="the loss(es) of the retrained models, comma-separated (e.g. ce,gce)",
    )
    cli.add_flag(
        parser.groups["output"],
        "--top",
        type=int,
        default=48,
        help="suspects shown in label_issues.png",
    )
    return parser


def build_config(args):
    """The runner's config from ``args``, with the audit's loss hyperparameters by default."""
    from robust_losses_jax import audit

    cfg = run.build_config(args)
    if cfg.loss == audit.AUDIT_DEFAULTS["loss"] and not cfg.loss_hparams:
        cfg = dataclasses.replace(cfg, loss_hparams=dict(audit.AUDIT_DEFAULTS["loss_hparams"]))
    return cfg


def load_pred_probs(path: str, num_examples: int, num_classes: int):
    """``[N, C]`` probabilities from a ``.npy``; ``ValueError`` (one line) for a wrong file."""
    import numpy as np

    from robust_losses_jax import detection

    try:
        probs = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"--pred-probs={path}: cannot read it as a .npy array ({error})."
        ) from None
    if probs.shape != (num_examples, num_classes):
        raise ValueError(
            f"--pred-probs={path} has shape {list(probs.shape)}; the dataset needs "
            f"[{num_examples}, {num_classes}] (one row per training example, one column per class)."
        )
    if not np.issubdtype(probs.dtype, np.floating) or not np.isfinite(probs).all():
        raise ValueError(f"--pred-probs={path}: must be finite floats; got {probs.dtype}.")
    sums = probs.sum(axis=1, dtype=np.float64)
    bad = np.abs(sums - 1.0) > detection.ROW_SUM_ATOL
    if bad.any() or probs.min() < 0:
        i = int(np.flatnonzero(bad)[0]) if bad.any() else int(np.argwhere(probs < 0)[0][0])
        raise ValueError(
            f"--pred-probs={path}: row {i} sums to {sums[i]:.6g} (min {probs[i].min():.3g}); "
            f"each row must be probabilities summing to 1 (within {detection.ROW_SUM_ATOL})."
        )
    return probs


def fit_report(issues, cfg, run_summary: dict | None):
    """The audit's :class:`audit_guards.FitReport` (``cfg`` None: probabilities were given)."""
    from robust_losses_jax import audit_guards, protocols

    return audit_guards.fit_report(
        issues.given_label, issues.predicted_label, issues.is_label_issue,
        cfg=None if run_summary is None else cfg,
        out_of_sample=run_summary is None or protocols.detector(cfg.detector).out_of_sample,
        test_accuracy=None if run_summary is None else run_summary["test_accuracy"],
        is_held_out=issues.is_held_out,
    )  # fmt: skip


def audit_summary(
    issues, cfg, fit, *, dataset: str, seconds: float, run_summary: dict | None
) -> dict:
    from robust_losses_jax import audit_guards

    names = issues.class_names
    return {
        "dataset": dataset,
        "examples": len(issues.given_label),
        "num_label_issues": issues.num_label_issues,
        "confused_pairs": issues.confused_pairs(CONFUSED_PAIRS_SHOWN),
        "warnings": audit_guards.audit_warnings(fit),
        "fit": fit.to_json(),
        "estimated_noise_rate": issues.estimated_noise_rate,
        "estimated_noise_rate_per_class": dict(
            zip(names, issues.noise_rate_per_class.tolist(), strict=True)
        ),
        "flagged_per_class": {
            names[k]: int(issues.is_label_issue[issues.given_label == k].sum())
            for k in range(len(names))
        },
        "filter_by": cfg.cl_filter_by,
        "settings": cfg.to_json() if run_summary is not None else {"pred_probs": True},
        "test_accuracy": None if run_summary is None else run_summary["test_accuracy"],
        "seconds": round(seconds, 1),
        "run": run_summary,
    }


def load_inputs(args, workdir: Path):
    """The audit's config, training and test splits, and the ``--pred-probs`` (None: train),
    each checked before any work starts; ``ValueError`` (one line) for the first bad input."""
    import jax

    from robust_losses_jax import (
        audit,
        experiment,
        input_pipeline,
        noisy_data,
        protocols,
        user_data,
    )
    from robust_losses_jax.protocols import in_sample

    if args.top < 1:
        raise ValueError(f"--top {args.top} must be >= 1.")
    cfg = build_config(args)
    protocols.validate(cfg, num_devices=jax.device_count())
    check_retrain_flags(args)
    noisy_data.check_noise(cfg)
    if not user_data.is_user_dataset(cfg.dataset):  # Loading checks the user's own.
        input_pipeline.check_dataset(cfg.dataset, args.data_dir)
    train, test = noisy_data.load_splits(cfg, args.data_dir)
    train = train.take(cfg.train_size and min(cfg.train_size, len(train)))
    audit.check_training_split(train, where=f"--dataset={cfg.dataset}")
    held_out = (
        "holdout" in protocols.detector(cfg.detector).settings
        and in_sample.holdout_fraction(cfg, len(test.labels)) > 0
    )
    if args.retrain and not len(test.labels) and (args.pred_probs or not held_out):
        raise ValueError(
            "--retrain measures test accuracy: the dataset has no test split, so it needs a "
            "held-out slice (--detector=pt with --holdout > 0 or auto)."
        )
    probs = None
    if args.pred_probs:
        probs = load_pred_probs(args.pred_probs, len(train), train.num_classes)
        refuse_existing_audit(workdir, args.overwrite)
    else:
        audit.check_settings(train, cfg, num_test=len(test.labels))
        experiment.check_workdir(cfg, workdir, resume=args.resume, overwrite=args.overwrite)
    return cfg, train, test, probs


def refuse_existing_audit(workdir: Path, overwrite: bool) -> None:
    """An audit that trains no run of :mod:`experiment` (given probabilities, features) checks
    its workdir itself: ``ValueError`` when one is there, unless ``overwrite``."""
    if (workdir / "summary.json").exists() and not overwrite:
        raise ValueError(
            f"workdir {workdir} already holds an audit; pass --overwrite to replace it."
        )


def check_retrain_flags(args) -> None:
    """``ValueError`` (one line) for a ``--retrain-mode`` or ``--retrain-loss`` not known."""
    from robust_losses_jax import losses, retrain

    if args.retrain_mode not in retrain.RETRAIN_MODES:
        raise ValueError(
            f"--retrain-mode={args.retrain_mode}: choose from {', '.join(retrain.RETRAIN_MODES)}."
        )
    for loss in retrain_losses(args):
        if loss not in losses.available_losses():
            raise ValueError(
                f"--retrain-loss: unknown loss {loss!r}; choose from "
                f"{', '.join(losses.available_losses())}."
            )


def retrain_losses(args) -> list[str]:
    return [name.strip() for name in args.retrain_loss.split(",") if name.strip()]


def clean_and_retrain(args, cfg, train, test, issues, workdir: Path) -> dict:
    """``--retrain``: ``cleaned.npz``, then fresh models on all the given labels and on the
    cleaned set (per ``--retrain-loss``); the summary's ``retrain`` entry."""
    import numpy as np

    from robust_losses_jax import input_pipeline, records, retrain

    cleaned = retrain.clean_labels(issues, args.retrain_mode)
    records.atomic_write(
        workdir / "cleaned.npz",
        lambda f: np.savez(
            f, keep=cleaned.keep, labels=cleaned.labels, relabelled=cleaned.relabelled
        ),
        mode="wb",
    )
    given = input_pipeline.Split(train.images, issues.given_label.astype(np.int32),
                                 train.num_classes, train.class_names)  # fmt: skip
    held = np.zeros(len(given), bool) if issues.is_held_out is None else issues.is_held_out
    if len(test.labels):
        evaluation, evaluated_on = test, f"test split of {len(test.labels)} examples"
    else:
        evaluation = input_pipeline.Split(given.images[held], given.labels[held],
                                          given.num_classes, given.class_names)  # fmt: skip
        evaluated_on = (
            f"held-out slice of {int(held.sum())} given labels, whose own errors make it "
            "understate the gain"
        )
    by_loss = retrain.retrain(
        cfg, given, evaluation, cleaned, losses_to_train=retrain_losses(args),
        in_training=~held, workdir=workdir / "retrain", resume=args.resume,
        overwrite=args.overwrite, progress=args.progress,
    )  # fmt: skip
    first = by_loss[retrain_losses(args)[0]]
    return {
        "baseline_test_accuracy": first["baseline_test_accuracy"],
        "cleaned_test_accuracy": first["cleaned_test_accuracy"],
        "removed": cleaned.removed,
        "relabelled": int(cleaned.relabelled.sum()),
        "mode": args.retrain_mode,
        "evaluated_on": evaluated_on,
        "by_loss": by_loss,
    }


def write_outputs(workdir: Path, cfg, images, issues, top: int) -> None:
    """``label_issues.csv``, ``pred_probs.npy``, the suspects' grid ``label_issues.png`` (not
    for ``images=None``: features) and the noise matrix (``noise_matrix.csv``, ``.png``)."""
    import numpy as np

    from robust_losses_jax import audit, records
    from robust_losses_jax.commands import report

    records.atomic_write(workdir / "label_issues.csv", lambda f: f.write(audit.issues_csv(issues)))
    records.atomic_write(
        workdir / "pred_probs.npy", lambda f: np.save(f, issues.pred_probs), mode="wb"
    )
    if images is not None:
        report.label_issues_grid(
            images, issues, workdir / "label_issues.png", top,
            title=f"{cfg.dataset}: the {min(top, len(images))} most suspect labels "
            f"(red: flagged)",
        )  # fmt: skip
    records.atomic_write(
        workdir / "noise_matrix.csv", lambda f: f.write(audit.noise_matrix_csv(issues))
    )
    report.noise_matrix_heatmap(
        issues, workdir / "noise_matrix.png",
        title=f"{cfg.dataset}: P(given label | true label), estimated",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cli.prepare_process(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    from robust_losses_jax import feature_data, input_pipeline, records
    from robust_losses_jax.training import checkpoints, loop

    run.xla_setup.enable_compilation_cache(args.compilation_cache)
    workdir = Path(args.workdir)
    if feature_data.holds_features(args.dataset):
        return audit_features(args, parser.typed, workdir, start)
    try:
        cfg, train, test, probs = load_inputs(args, workdir)
    except (ValueError, OSError, input_pipeline.DatasetUnavailableError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    try:
        issues, run_summary = find_issues(args, cfg, train, test, probs, workdir)
        if not records.is_writer():
            return 0
        write_outputs(workdir, cfg, train.images, issues, args.top)
        retrained = (
            clean_and_retrain(args, cfg, train, test, issues, workdir) if args.retrain else None
        )
    except (loop.NonFiniteError, checkpoints.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finish_audit(workdir, cfg, issues, run_summary, start, retrained)
    return 0


def find_issues(args, cfg, train, test, probs, workdir: Path):
    """``(LabelIssues, the run's summary)``: ``--pred-probs`` ranked (no run: None), or the
    audit's models trained; with each file's path for a folder dataset."""
    from robust_losses_jax import audit, experiment, user_data

    run_summary = None
    if probs is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        issues = audit.rank_label_issues(
            train.labels, probs, filter_by=cfg.cl_filter_by, class_names=train.class_names
        )
    else:
        run_summary = experiment.train_and_evaluate(
            cfg, workdir, data_dir=args.data_dir, resume=args.resume, overwrite=args.overwrite,
            progress=args.progress, log=lambda _: None, splits=(train, test),
        )  # fmt: skip
        issues = audit.issues_from_run(workdir, cfg, train.class_names)
    if cfg.dataset.startswith(user_data.FOLDER_PREFIX):
        paths = user_data.folder_paths(cfg.dataset.removeprefix(user_data.FOLDER_PREFIX))
        issues = dataclasses.replace(issues, paths=paths[: len(train)])
    return issues, run_summary


def finish_audit(workdir: Path, cfg, issues, run_summary, start: float, retrained=None) -> None:
    """The fit, ``summary.json`` (with ``retrain`` where it ran) and the last lines on stdout."""
    from robust_losses_jax import records

    fit = fit_report(issues, cfg, run_summary)
    summary = audit_summary(
        issues, cfg, fit, dataset=cfg.dataset, seconds=time.perf_counter() - start,
        run_summary=run_summary,
    )  # fmt: skip
    if retrained is not None:
        summary["retrain"] = retrained
    records.write_json(workdir / "summary.json", summary)
    print_result(summary, fit, workdir / "label_issues.csv", issues.estimated_noise_rate)


def load_feature_inputs(args, typed: frozenset[str], workdir: Path):
    """A features audit's config and data (``FEATURE_AUDIT_DEFAULTS`` under the flags typed),
    checked before any work; ``ValueError`` (one line) for the first bad input."""
    import jax

    from robust_losses_jax import audit, feature_data, probe, protocols

    cfg = build_config(args)
    untyped = {k: v for k, v in audit.FEATURE_AUDIT_DEFAULTS.items() if k not in typed}
    cfg = dataclasses.replace(cfg, **untyped)
    protocols.validate(cfg, num_devices=jax.device_count())
    probe.probe_for(cfg, 2)  # The model is one a probe can be.
    refused = {"--noise-rate": cfg.noise_rate > 0, "--detector": cfg.detector != "pt",
               "--pred-probs": bool(args.pred_probs), "--retrain": args.retrain}  # fmt: skip
    for flag in (flag for flag, bad in refused.items() if bad):
        raise ValueError(f"{flag}: a features audit trains one probe on the labels as given.")
    data = feature_data.load_features(args.dataset.removeprefix(feature_data.NPZ_PREFIX))
    if cfg.train_size:
        size = min(cfg.train_size, len(data.train_labels))
        data = dataclasses.replace(data, train_features=data.train_features[:size],
                                   train_labels=data.train_labels[:size])  # fmt: skip
    refuse_existing_audit(workdir, args.overwrite)
    return cfg, data


def audit_features(args, typed: frozenset[str], workdir: Path, start: float) -> int:
    """``find-errors`` on an npz of features: one probe, the same outputs as for images but
    the images' grid."""
    from robust_losses_jax import audit
    from robust_losses_jax.training import loop

    try:
        cfg, data = load_feature_inputs(args, typed, workdir)
    except (ValueError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    try:
        result = audit.find_feature_issues(
            data.train_features, data.train_labels, class_names=data.class_names,
            test_features=data.test_features, test_labels=data.test_labels, config=cfg,
        )  # fmt: skip
    except loop.NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    issues = result.issues
    workdir.mkdir(parents=True, exist_ok=True)
    write_outputs(workdir, cfg, None, issues, args.top)
    run_summary = {"test_accuracy": result.test_accuracy, "probe_seconds": round(result.seconds, 2)}
    finish_audit(workdir, cfg, issues, run_summary, start)
    return 0


def print_result(summary: dict, fit, csv_path: Path, noise_rate: float) -> None:
    """The audit's last lines: what was flagged, how well the model fits, the warnings."""
    print(
        f"{summary['dataset']}: {summary['num_label_issues']} of {summary['examples']} labels "
        f"flagged (estimated noise rate {noise_rate:.1%}); ranked in {csv_path} "
        f"({summary['seconds']:.0f} s)"
    )
    pairs = ", ".join(f"{p['given']} -> {p['suggested']} {p['count']}"
                      for p in summary["confused_pairs"])  # fmt: skip
    print(f"most flagged (given -> suggested): {pairs or 'none flagged'}")
    heldout = (
        "no held-out labels (no test split, --holdout=0)" if fit.heldout_accuracy is None
        else f"{fit.heldout_accuracy:.3f} held out ({fit.heldout_source})"
    )  # fmt: skip
    trained = "" if fit.loss is None else (
        f"; trained {fit.ce_epochs} epoch(s) of cross-entropy, {fit.robust_epochs} of {fit.loss}"
    )  # fmt: skip
    print(f"fit: accuracy on the given labels {fit.given_accuracy:.3f}, {heldout}{trained}")
    retrained = summary.get("retrain")
    if retrained:
        mode = "relabelled or dropped" if retrained["mode"] == "relabel" else "dropped"
        for loss, acc in retrained["by_loss"].items():
            print(
                f"retrain ({loss}): test accuracy {acc['baseline_test_accuracy']:.3f} on all the "
                f"given labels, {acc['cleaned_test_accuracy']:.3f} with the flagged {mode}; "
                f"evaluated on the {retrained['evaluated_on']}"
            )
    for line in summary["warnings"]:
        print(f"warning: {line}")


if __name__ == "__main__":
    sys.exit(main())
