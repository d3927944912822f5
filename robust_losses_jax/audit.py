"""Finding the label errors in a dataset: every example ranked, the likely errors flagged.

Two entry points:

- :func:`rank_label_issues` takes out-of-sample predicted probabilities ``[N, C]`` (from this
  project's K-fold training or any other tool) and returns a :class:`LabelIssues`.
- :func:`find_label_issues` takes images and labels in memory, trains the K fold models itself
  (fresh model per fold, stacked on the accelerator), then ranks.

Semantics follow cleanlab's: ``is_label_issue`` is ``cleanlab.filter.find_label_issues(labels,
pred_probs, filter_by=...)`` (Confident Learning, :func:`detection.confident_learning`) and
``label_score`` is ``cleanlab.rank.get_label_quality_scores(labels, pred_probs,
method="self_confidence")``: the probability of the given label, in ``[0, 1]``, lower = more
likely mislabelled. Examples are ordered by it, ties broken by the margin of the given label
over the best other class (in logits when the model's are known, else in log-probabilities),
which does not saturate where ``p_t`` rounds to 0.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax import detection, experiment, input_pipeline, probe, protocols, user_data
from robust_losses_jax.protocols import in_sample

# The audit's defaults where they differ from the runner's (``config.Config``): nothing
# injected, every example, and the detector the project's measurements pick per unit of compute:
# one in-sample model trained with gce, flagged where it predicts another class (docs/detection.md,
# "Which detector"). ``--detector=cl`` (K-fold Confident Learning) stays an option.
# A features audit (:func:`find_feature_issues`): a probe trains in seconds, so longer.
FEATURE_AUDIT_DEFAULTS: dict[str, Any] = {"model": "mlp", "epochs": 30}
AUDIT_DEFAULTS: dict[str, Any] = {
    "noise_rate": 0.0,
    "train_size": None,
    "detector": "pt",
    "loss": "gce",
    "epochs": 10,
    "holdout": None,  # Auto: a tenth held out where the dataset has no test split.
    "loss_hparams": {},
}
# cleanlab's ``Datalab.get_issues("label")`` columns first, then this project's; ``path`` only
# for datasets read from files.
CLEANLAB_COLUMNS = ("is_label_issue", "label_score", "given_label", "predicted_label")
CSV_COLUMNS = (*CLEANLAB_COLUMNS, "rank", "index", "margin", "given_name", "predicted_name")


@dataclasses.dataclass(frozen=True)
class LabelIssues:
    """Every example of a dataset, scored for being mislabelled.

    Attributes:
      given_label: int ``[N]``, the labels as given.
      predicted_label: int ``[N]``, the most probable class.
      label_score: float ``[N]`` in ``[0, 1]``: the probability of the given label (cleanlab's
        self-confidence); lower = more likely mislabelled.
      margin: float ``[N]``: the given label's logit (or log-probability) minus the best other
        class's; breaks ties of ``label_score``.
      is_label_issue: bool ``[N]``, Confident Learning's flag (from a run: its protocol's own,
        AUM's, or the prediction differing from the given label for the in-sample ``pt``).
      ranking: int ``[N]``, example indices, most suspect first.
      pred_probs: float ``[N, C]``, the (out-of-sample) probabilities ranked.
      noise_rate_per_class: float ``[C]``: estimated fraction of each given class that is
        mislabelled (the calibrated confident joint, off-diagonal share of its row; NaN for a
        class with no examples).
      estimated_noise_rate: the same over the whole dataset.
      class_names: ``C`` names (``str(k)`` where none are known).
      paths: ``N`` file paths relative to the dataset's folder, or None (arrays).
      is_held_out: bool ``[N]``: the examples the one model did not train on (``--holdout``;
        their ``pred_probs`` are out-of-sample), or None.
    """

    given_label: np.ndarray
    predicted_label: np.ndarray
    label_score: np.ndarray
    margin: np.ndarray
    is_label_issue: np.ndarray
    ranking: np.ndarray
    pred_probs: np.ndarray
    noise_rate_per_class: np.ndarray
    estimated_noise_rate: float
    class_names: tuple[str, ...]
    paths: tuple[str, ...] | None = None
    is_held_out: np.ndarray | None = None

    @property
    def num_label_issues(self) -> int:
        return int(self.is_label_issue.sum())

    def top(self, k: int) -> np.ndarray:
        """The ``k`` most suspect example indices."""
        return self.ranking[:k]

    def noise_matrix(self) -> np.ndarray:
        """float64 ``[C, C]``: P(given label ``i`` | true label ``j``), columns summing to 1,
        from :attr:`pred_probs` (:func:`detection.noise_matrix`, cleanlab's estimate)."""
        return detection.noise_matrix(self.given_label, self.pred_probs)

    def confused_pairs(self, top: int = 5) -> list[dict[str, Any]]:
        """The flagged examples' most frequent ``given -> suggested`` class pairs: ``given``,
        ``suggested`` (names), ``count``; most first."""
        names = self.class_names
        pairs = detection.confused_pairs(
            self.given_label, self.predicted_label, self.is_label_issue, top
        )
        return [{"given": names[i], "suggested": names[j], "count": n} for i, j, n in pairs]

    def columns(self) -> dict[str, np.ndarray]:
        """The table's columns (:data:`CSV_COLUMNS`, then ``held_out`` and ``path`` where
        known), rows most suspect first: ``[N]`` each."""
        order = self.ranking
        given, predicted = self.given_label[order], self.predicted_label[order]
        names = np.asarray(self.class_names, dtype=object)
        table = {
            "is_label_issue": self.is_label_issue[order].astype(bool),
            "label_score": self.label_score[order],
            "given_label": given,
            "predicted_label": predicted,
            "rank": np.arange(len(order)),
            "index": order,
            "margin": self.margin[order],
            "given_name": names[given],
            "predicted_name": names[predicted],
        }
        if self.is_held_out is not None:
            table["held_out"] = self.is_held_out[order].astype(bool)
        if self.paths is not None:
            table["path"] = np.asarray(self.paths, dtype=object)[order]
        return table

    def to_dataframe(self) -> Any:
        """A ``pandas.DataFrame`` of :meth:`columns`, indexed by example index (``sort_index()``
        gives cleanlab's ``Datalab.get_issues("label")`` order). Needs pandas."""
        import pandas as pd  # Optional: only this method needs it.

        table = self.columns()
        return pd.DataFrame(table, index=pd.Index(table["index"], name=None))


def log_margin(pred_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """float64 ``[N]``: ``log p_t - log max_{k != t} p_k`` (``-inf`` where ``p_t`` is 0)."""
    probs = np.asarray(pred_probs, np.float64)
    n = len(labels)
    others = probs.copy()
    others[np.arange(n), labels] = -np.inf
    with np.errstate(divide="ignore"):
        return np.log(probs[np.arange(n), labels]) - np.log(others.max(axis=1))


def suspicion_order(label_score: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """Indices by ``label_score`` ascending, ties by ``margin`` ascending, then by index."""
    return np.lexsort((np.arange(len(label_score)), margin, label_score))


def rank_label_issues(
    labels: Any,
    pred_probs: Any,
    *,
    filter_by: str = "prune_by_noise_rate",
    margin: Any | None = None,
    is_label_issue: Any | None = None,
    class_names: Sequence[str] | None = None,
) -> LabelIssues:
    """Rank and flag every example from its (out-of-sample) predicted probabilities.

    Args:
      labels: ``[N]`` given labels in ``[0, C)``.
      pred_probs: ``[N, C]`` out-of-sample probabilities, rows summing to 1.
      filter_by: Confident Learning's rule (:data:`detection.FILTER_BY`; cleanlab's default).
      margin: ``[N]`` logit margins of the given label, when the model's logits are known (the
        tie-break of the ranking); default: from ``pred_probs`` (:func:`log_margin`).
      is_label_issue: ``[N]`` flags of another detector (AUM) instead of Confident Learning's.
      class_names: ``C`` names.

    Raises:
      ValueError: one line naming the bad value (labels out of range, a wrong shape, rows that
        do not sum to 1).
    """
    flagged, _ = detection.confident_learning(labels, pred_probs, filter_by=filter_by)
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(pred_probs)
    n, num_classes = probs.shape
    quality = probs[np.arange(n), labels].astype(np.float64)
    margin = log_margin(probs, labels) if margin is None else np.asarray(margin, np.float64)
    if is_label_issue is not None:
        flagged = np.asarray(is_label_issue, bool)
    overall, per_class = detection.estimated_noise_rates(labels, probs)
    names = tuple(class_names) if class_names is not None else tuple(map(str, range(num_classes)))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes; pass one per class.")
    return LabelIssues(
        given_label=labels,
        predicted_label=probs.argmax(axis=1),
        label_score=quality,
        margin=margin,
        is_label_issue=flagged,
        ranking=suspicion_order(quality, margin),
        pred_probs=probs,
        noise_rate_per_class=per_class,
        estimated_noise_rate=overall,
        class_names=names,
    )


def issues_csv(issues: LabelIssues) -> str:
    """The table of ``label_issues.csv``: one row per example, most suspect first; flags as
    ``True``/``False``, numbers to 6 significant digits, an infinite margin as an empty cell."""
    table = issues.columns()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table)
    for row in zip(*table.values(), strict=True):
        writer.writerow([_csv_cell(value) for value in row])
    return out.getvalue()


def noise_matrix_csv(issues: LabelIssues) -> str:
    """``noise_matrix.csv``: a header row and a first column of class names; entry (row ``i``,
    column ``j``) = P(given label ``i`` | true label ``j``), 6 significant digits."""
    names = issues.class_names
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["given \\ true", *names])
    for name, row in zip(names, issues.noise_matrix(), strict=True):
        writer.writerow([name, *(f"{value:.6g}" for value in row)])
    return out.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.floating | float):
        return f"{value:.6g}" if np.isfinite(value) else ""
    return value


def audit_config(**overrides: Any) -> config_lib.Config:
    """The audit's configuration: the runner's defaults, :data:`AUDIT_DEFAULTS`, ``overrides``."""
    return config_lib.Config(**{**AUDIT_DEFAULTS, **overrides})


def find_label_issues(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    test_images: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    config: config_lib.Config | None = None,
    workdir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> LabelIssues:
    """Train the K fold models on ``images`` and find the likely label errors among ``labels``.

    Args:
      images: uint8 ``[N, H, W]`` or ``[N, H, W, C]``.
      labels: ``[N]`` integers in ``[0, num_classes)``.
      num_classes: default: the largest label plus one (or ``len(class_names)``).
      class_names: names of the classes, for the table.
      test_images, test_labels: an optional clean test split (its accuracy goes to the run's
        ``summary.json``).
      config: the settings (default :func:`audit_config`: K-fold Confident Learning with the
        favoured loss); its ``dataset`` is only a name here.
      workdir: where the run's files go (checkpoints, folds, predictions); default: a temporary
        directory, removed afterwards.
      resume: continue a killed run in ``workdir``.

    Returns:
      :class:`LabelIssues`, ranked on the run's probabilities (out-of-sample for
      ``config.detector="cl"``, one model's in-sample ones for ``"pt"``), flagged by the
      detector's own rule (:attr:`protocols.Detector.flags`: for ``pt`` where the model predicts
      another class; with a robust loss it flagged better than K folds,
      docs/results/README.md).
    """
    images = np.asarray(images)
    images = images[..., None] if images.ndim == 3 else images
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
    if num_classes is None:
        num_classes = len(class_names) if class_names else int(labels.max()) + 1
    names = tuple(class_names) if class_names else tuple(str(k) for k in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes; pass one per class.")
    train = input_pipeline.Split(images, labels.astype(np.int32), num_classes, names)
    check_training_split(train, where="images/labels")
    if test_images is None:
        test = input_pipeline.Split(images[:0], train.labels[:0], num_classes, names)
    else:
        test_images = np.asarray(test_images)
        test_images = test_images[..., None] if test_images.ndim == 3 else test_images
        test = input_pipeline.Split(test_images, np.asarray(test_labels, np.int32), num_classes,
                                    names)  # fmt: skip
    cfg = config or audit_config(dataset="arrays")
    check_settings(train, cfg, num_test=len(test.labels))
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(workdir) if workdir is not None else Path(scratch)
        experiment.train_and_evaluate(
            cfg, run_dir, resume=resume, progress=progress, log=log, splits=(train, test),
        )  # fmt: skip
        return issues_from_run(run_dir, cfg, names)


@dataclasses.dataclass(frozen=True)
class FeatureAudit:
    """:func:`find_feature_issues`' result: the issues and how the probe did.

    Attributes:
      issues: :class:`LabelIssues` (``is_held_out`` set where a slice was held out).
      test_accuracy: on the test split, or None without one.
      seconds: wall time of training and scoring.
    """

    issues: LabelIssues
    test_accuracy: float | None
    seconds: float


def find_feature_issues(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    test_features: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    config: config_lib.Config | None = None,
) -> FeatureAudit:
    """Find the likely label errors among ``labels`` from feature vectors ``[N, D]``.

    One probe (:mod:`probe`, an MLP with one hidden layer) trained with the audit's
    loss on the standardised features, in-sample, flags the examples whose given label it
    disputes, as the image audit's ``pt`` does; ``config.holdout`` (auto: a tenth without a
    test split) keeps a slice out of training for an out-of-sample accuracy.
    """
    start = time.perf_counter()
    cfg = config or audit_config(dataset="features", **FEATURE_AUDIT_DEFAULTS)
    if cfg.detector != "pt":
        raise ValueError(f"--detector={cfg.detector}: a features audit trains one probe (pt).")
    num_classes = len(class_names)
    test_features = (
        np.zeros((0, features.shape[1]), np.float32) if test_features is None else test_features
    )
    held = in_sample.held_out_mask(
        jax.random.key(cfg.seed), len(labels), in_sample.holdout_fraction(cfg, len(test_features))
    )
    mean, std = probe.standardizer(features[~held])
    params = probe.train_probe(cfg, (features[~held] - mean) / std, labels[~held], num_classes)
    logits = probe.probe_logits(cfg, params, (features - mean) / std, num_classes)
    probs = np.asarray(jax.nn.softmax(logits.astype(np.float64), axis=-1))
    issues = rank_label_issues(  # Its default margin: log_margin of these probabilities.
        labels, probs, is_label_issue=probs.argmax(1) != labels, class_names=class_names
    )
    test_accuracy = None
    if len(test_features):
        test_logits = probe.probe_logits(cfg, params, (test_features - mean) / std, num_classes)
        test_accuracy = float(np.mean(test_logits.argmax(1) == test_labels))
    issues = dataclasses.replace(issues, is_held_out=held if held.any() else None)
    return FeatureAudit(issues, test_accuracy, time.perf_counter() - start)


def issues_from_run(run_dir: Path, cfg: config_lib.Config, class_names: Sequence[str]):
    """:class:`LabelIssues` from a finished run's ``predictions.npz``."""
    with np.load(Path(run_dir) / "predictions.npz") as pred:
        flags = protocols.detector(cfg.detector).flags(pred)
        issues = rank_label_issues(
            pred["given_label"], pred["probs"], filter_by=cfg.cl_filter_by,
            margin=pred["margin"], is_label_issue=flags, class_names=class_names,
        )  # fmt: skip
        held = pred["is_held_out"] if "is_held_out" in pred.files else None
        return dataclasses.replace(issues, is_held_out=held)


def check_training_split(split: Any, *, where: str) -> None:
    """Refuse (one ``ValueError`` line) images and labels an audit cannot use."""
    images, labels = split.images, split.labels
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"{where}: images must be uint8 [N, H, W] or [N, H, W, C]; got {images.dtype} "
            f"{list(images.shape)}."
        )
    if labels.shape != (len(images),):
        raise ValueError(
            f"{where}: {len(images)} images but labels of shape {list(labels.shape)}; pass one "
            "label per image."
        )
    user_data.check_label_range(where, "label", labels, split.num_classes)


def check_settings(split: Any, cfg: config_lib.Config, *, num_test: int = 0) -> None:
    """Refuse (one ``ValueError`` line) settings the split cannot train: what the detector
    refuses (:attr:`protocols.Detector.check_data`: for K-fold Confident Learning a class with
    fewer examples than ``cfg.folds``); a batch larger than the examples each model trains on
    (``num_test``: the test split's size, which decides ``--holdout=auto``)."""
    check_data = protocols.detector(cfg.detector).check_data
    per_model = check_data(cfg, split, num_test) if check_data else len(split.labels)
    if cfg.batch_size > per_model:
        raise ValueError(
            f"--batch-size {cfg.batch_size} exceeds the {per_model} examples each model trains "
            "on; pass a smaller --batch-size."
        )
