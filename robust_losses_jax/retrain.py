"""Clean and retrain: what an audit's flags are worth, measured as test accuracy.

After an audit, :func:`clean_labels` drops the flagged examples (or relabels the confident
ones to the suggested class), and :func:`retrain` trains fresh models with each asked-for loss
on all the given labels (the baseline) and on the cleaned set, and evaluates both on the same
examples: the test split, or, without one, the audit's held-out slice of the given labels
(``--holdout``), whose own label errors make it understate the gain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax import experiment, input_pipeline, losses

RETRAIN_MODES = ("drop", "relabel")
# ``relabel``: a flagged example takes the suggested class when the model gives that class at
# least this probability; the other flagged examples are dropped.
RELABEL_MIN_PROB = 0.9


@dataclasses.dataclass(frozen=True)
class CleanedLabels:
    """The training set after cleaning, over all ``N`` audited examples.

    Attributes:
      keep: bool ``[N]``: the example stays in the training set.
      labels: int ``[N]``: its label there (the given one, or the suggested one if relabelled).
      relabelled: bool ``[N]``.
    """

    keep: np.ndarray
    labels: np.ndarray
    relabelled: np.ndarray

    @property
    def removed(self) -> int:
        return int((~self.keep).sum())


def clean_labels(issues: Any, mode: str = "drop") -> CleanedLabels:
    """``issues`` (``audit.LabelIssues``) cleaned: the flagged examples dropped, or with
    ``mode="relabel"`` the confident ones (suggested class probability at least
    :data:`RELABEL_MIN_PROB`) relabelled and the rest dropped."""
    if mode not in RETRAIN_MODES:
        raise ValueError(f"Unknown retrain mode {mode!r}; choose from {', '.join(RETRAIN_MODES)}.")
    flagged = np.asarray(issues.is_label_issue, bool)
    relabel = np.zeros_like(flagged)
    if mode == "relabel":
        relabel = flagged & (issues.pred_probs.max(axis=1) >= RELABEL_MIN_PROB)
    labels = np.where(relabel, issues.predicted_label, issues.given_label).astype(np.int32)
    return CleanedLabels(keep=~flagged | relabel, labels=labels, relabelled=relabel)


def retrain_config(cfg: config_lib.Config, loss: str) -> config_lib.Config:
    """``cfg`` for a fresh model with ``loss`` (its default hyperparameters and delay) on labels
    taken as given: nothing injected, one model, nothing held out."""
    same = losses.canonical_name(loss) == losses.canonical_name(cfg.loss)
    return dataclasses.replace(
        cfg, loss=loss, loss_hparams=dict(cfg.loss_hparams) if same else {}, delay_epochs=None,
        auto_tau=False, detector="pt", holdout=0.0, noise_rate=0.0, train_size=None,
    )  # fmt: skip


def retrain(
    cfg: config_lib.Config,
    train: input_pipeline.Split,
    evaluation: input_pipeline.Split,
    cleaned: CleanedLabels,
    *,
    losses_to_train: Sequence[str],
    in_training: np.ndarray,
    workdir: Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, dict[str, float]]:
    """Test accuracy of fresh models on all given labels and on the cleaned set, per loss.

    Args:
      cfg: the audit's config (model, optimizer, epochs, seed are kept).
      train: the audited split (given labels; ``N`` examples).
      evaluation: where accuracy is measured (the test split, or the held-out slice).
      cleaned: :func:`clean_labels`' result.
      losses_to_train: the losses to compare (e.g. ``("ce", "gce")``).
      in_training: bool ``[N]``: the examples any model may train on (not the held-out slice).
      workdir: each model's run goes to ``workdir/<baseline|cleaned>_<loss>``.

    Returns:
      ``{loss: {"baseline_test_accuracy", "cleaned_test_accuracy"}}``.
    """
    sets = {
        "baseline": (in_training, train.labels),
        "cleaned": (in_training & cleaned.keep, cleaned.labels),
    }
    results: dict[str, dict[str, float]] = {}
    for loss in losses_to_train:
        run_cfg = retrain_config(cfg, loss)
        for name, (rows, labels) in sets.items():
            split = input_pipeline.Split(train.images[rows], labels[rows].astype(np.int32),
                                         train.num_classes, train.class_names)  # fmt: skip
            summary = experiment.train_and_evaluate(
                run_cfg, Path(workdir) / f"{name}_{loss}", resume=resume, overwrite=overwrite,
                progress=progress, log=log, splits=(split, evaluation),
            )  # fmt: skip
            results.setdefault(loss, {})[f"{name}_test_accuracy"] = summary["test_accuracy"]
    return results


RETRAIN_ROWS = (("baseline", "on all the given labels"), ("cleaned", "with the flagged removed"))


def retrain_table(summaries: Sequence[dict[str, Any]]) -> str:
    """Markdown: test accuracy per retrained loss and training set, mean ± population std over
    the audits' ``summary.json`` (one per seed), and each seed's value."""
    losses_run = list(summaries[0]["retrain"]["by_loss"])
    evaluated_on = summaries[0]["retrain"]["evaluated_on"]
    lines = [f"{len(summaries)} seed(s); evaluated on the {evaluated_on}", "",
             "| model | test accuracy | per seed |", "|---|---|---|"]  # fmt: skip
    for loss in losses_run:
        for key, words in RETRAIN_ROWS:
            values = [s["retrain"]["by_loss"][loss][f"{key}_test_accuracy"] for s in summaries]
            shown = ", ".join(f"{v:.4f}" for v in values)
            lines.append(f"| {loss} {words} | {np.mean(values):.4f} ± {np.std(values):.4f} | "
                         f"{shown} |")  # fmt: skip
    removed = [s["retrain"]["removed"] for s in summaries]
    lines += ["", f"removed per seed: {', '.join(map(str, removed))}"]
    return "\n".join(lines) + "\n"
