"""How well a detector finds the corrupted labels: decision and ranking metrics (host NumPy).

The truth is ``is_corrupted``, bool ``[N]`` (from :func:`corruption.corrupt_labels`). A detector
gives either a decision ``is_flagged``, bool ``[N]``, or a ``score``, float ``[N]``: higher means
more likely a label error. NumPy and JAX arrays are both accepted (read with ``np.asarray``).

The definitions are scikit-learn's, with corrupted = the positive class, and ``zero_division=0``
where a ratio has nothing to divide: the tests check every value against ``sklearn.metrics``.
Results are Python ``float``/``int``, ready for JSON. Bad input (empty or not ``[N]``, shapes that
differ, a non-boolean truth or decision, NaN or non-numeric scores) raises ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_bool(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype != np.bool_:
        raise ValueError(f"{name} must be a boolean array, got dtype {array.dtype}.")
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must have shape [N] with N >= 1, got {list(array.shape)}.")
    return array


def _as_score(values: Any, n: int) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"score must be numeric: {error}") from None
    if array.shape != (n,):
        raise ValueError(
            f"score must have the shape of is_corrupted, [{n}]; got {list(array.shape)}."
        )
    nans = np.flatnonzero(np.isnan(array))
    if nans.size:
        raise ValueError(f"score has {nans.size} NaN value(s), the first at index {nans[0]}.")
    return array


def _ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator``, 0.0 when the denominator is 0 (sklearn's zero_division=0)."""
    return numerator / denominator if denominator else 0.0


def detection_metrics(is_corrupted: Any, is_flagged: Any) -> dict[str, float | int]:
    """Confusion counts and scores of a flagged set against the true label errors.

    Args:
      is_corrupted: bool ``[N]``, the truth.
      is_flagged: bool ``[N]``, the detector's decision.

    Returns:
      ``tp``, ``fp``, ``fn``, ``tn``, ``num_flagged`` (``tp + fp``), ``num_corrupted``
      (``tp + fn``) as ints, and as floats:

      - ``precision = tp / (tp + fp)``, 0.0 when nothing is flagged;
      - ``recall = tp / (tp + fn)`` (the TPR), 0.0 when nothing is corrupted;
      - ``f1 = 2 tp / (2 tp + fp + fn)``, the harmonic mean of the two, 0.0 when
        ``precision + recall = 0`` (nothing flagged is corrupted, or both sets are empty);
      - ``balanced_accuracy = (TPR + TNR) / 2`` with ``TNR = tn / (tn + fp)``. As in sklearn, a
        class absent from the truth is left out of the mean: it is the TNR when nothing is
        corrupted and the TPR when everything is.
    """
    truth = _as_bool("is_corrupted", is_corrupted)
    flagged = _as_bool("is_flagged", is_flagged)
    if flagged.shape != truth.shape:
        raise ValueError(
            f"is_flagged must have the shape of is_corrupted, {list(truth.shape)}; "
            f"got {list(flagged.shape)}."
        )
    tp = int(np.sum(truth & flagged))
    fp = int(np.sum(~truth & flagged))
    fn = int(np.sum(truth & ~flagged))
    tn = int(np.sum(~truth & ~flagged))
    # Recall of each class present in the truth (sklearn's balanced accuracy).
    class_recalls = [tp / (tp + fn)] if tp + fn else []
    class_recalls += [tn / (tn + fp)] if tn + fp else []
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": float(np.mean(class_recalls)),
        "num_flagged": tp + fp,
        "num_corrupted": tp + fn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def auroc(is_corrupted: Any, score: Any) -> float:
    """Area under the ROC curve of ``score`` for finding the corrupted examples.

    The probability that a random corrupted example scores higher than a random clean one, ties
    counting one half (the Mann-Whitney statistic, equal to sklearn's ``roc_auc_score``, whose
    trapezoids handle ties the same way).

    Args:
      is_corrupted: bool ``[N]``.
      score: float ``[N]``, higher = more likely an error; ``+-inf`` allowed, NaN is not.

    Returns:
      A float in ``[0, 1]``; NaN when only one class is present (nothing or everything corrupted),
      where it is undefined (sklearn warns and returns NaN too).
    """
    truth = _as_bool("is_corrupted", is_corrupted)
    values = _as_score(score, truth.size)
    num_pos = int(truth.sum())
    num_neg = truth.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    # 1-based ranks, tied values sharing the mean of their ranks.
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = (ends - counts + 1 + ends) / 2.0
    rank_sum = float(np.sum(mean_rank[inverse][truth]))
    return (rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg)


def average_precision(is_corrupted: Any, score: Any) -> float:
    """Average precision: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds.

    Sklearn's ``average_precision_score``: thresholds at each distinct score, from the highest
    down (tied scores enter together), ``P_n``/``R_n`` the precision and recall of flagging every
    example scoring at least the n-th threshold, ``R_0 = 0``; no interpolation.

    Returns:
      A float in ``[0, 1]``: 1.0 when every corrupted example outscores every clean one; 0.0 when
      nothing is corrupted (as sklearn, which warns).
    """
    truth = _as_bool("is_corrupted", is_corrupted)
    values = _as_score(score, truth.size)
    if not truth.any():
        return 0.0
    order = np.argsort(-values, kind="stable")
    sorted_values, sorted_truth = values[order], truth[order]
    # The last position of each run of tied scores: one threshold per distinct score.
    last_of_tie = np.append(sorted_values[1:] != sorted_values[:-1], True)
    tps = np.cumsum(sorted_truth)[last_of_tie]
    flagged = np.arange(1, truth.size + 1)[last_of_tie]
    precision = tps / flagged
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def precision_at_k(is_corrupted: Any, score: Any, k: int | None = None) -> float:
    """Fraction of label errors among the ``k`` highest-scoring examples.

    Ties are broken by a stable descending sort on ``score``: among equal scores the lower index
    comes first, so the result is deterministic.

    Args:
      is_corrupted: bool ``[N]``.
      score: float ``[N]``, higher = more likely an error.
      k: how many top examples, in ``[0, N]``; default: the number of corrupted examples (then
        precision, recall and R-precision coincide).

    Returns:
      A float in ``[0, 1]``; 0.0 when ``k == 0`` (nothing flagged, as in
      :func:`detection_metrics`), which is the default when nothing is corrupted.
    """
    truth = _as_bool("is_corrupted", is_corrupted)
    values = _as_score(score, truth.size)
    if k is None:
        k = int(truth.sum())
    elif isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k <= truth.size:
        raise ValueError(f"k={k!r} must be an integer in [0, N={truth.size}].")
    if k == 0:
        return 0.0
    top = np.argsort(-values, kind="stable")[:k]
    return float(np.mean(truth[top]))


def ranking_metrics(is_corrupted: Any, score: Any) -> dict[str, float]:
    """``auroc``, ``average_precision`` and ``precision_at_k`` (default ``k``) of a score."""
    return {
        "auroc": auroc(is_corrupted, score),
        "average_precision": average_precision(is_corrupted, score),
        "precision_at_k": precision_at_k(is_corrupted, score),
    }


def memorised_fraction(pred: np.ndarray, given: np.ndarray, is_corrupted: np.ndarray) -> float:
    """The fraction of corrupted examples predicted as their (wrong) given label; 0 if none."""
    if not is_corrupted.any():
        return 0.0
    return float(np.mean(pred[is_corrupted] == given[is_corrupted]))
