"""Label-error detectors: each takes per-example arrays and returns ``(is_flagged, score)``.

``is_flagged`` is bool ``[N]``; ``score`` is float ``[N]``, higher meaning more likely a label
error, for threshold-free scoring (AUROC, precision at k). NumPy and JAX arrays are accepted.

Three families:

- Baselines: :func:`pt_threshold` (given-label probability below a threshold) and
  :func:`predicted_neq_given` (argmax differs from the given label).
- Confident Learning (Northcutt et al. 2021), :func:`confident_learning`, a NumPy port of
  ``cleanlab.filter.find_label_issues`` (cleanlab 2.9) that flags exactly the same examples for
  every ``filter_by``; :func:`confident_joint` and :func:`noise_matrix` expose its
  pieces. The port repeats cleanlab's floating-point expressions and sorts (same operands, same
  order, same ``np.argsort`` kind) on purpose: ties between equal probabilities or margins are
  broken by the sort, and a mathematically equal but differently computed value can break them
  differently.
- Area Under the Margin (Pleiss et al. 2020), as pure functions for a training loop:
  :func:`assign_threshold_examples` (fake-class "threshold examples", disjoint across runs),
  :func:`margins`, :func:`init_aum` / :func:`update_aum` / :func:`aum_scores` (jittable running
  mean of the margin), :func:`aum_threshold` and :func:`aum_detect`.

Bad inputs raise ``ValueError`` naming the bad value and what is allowed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

FILTER_BY = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
)
RANK_BY = ("self_confidence", "normalized_margin")

# Rows of ``pred_probs`` must sum to 1 within this (float32 softmax outputs are off by ~1e-7).
ROW_SUM_ATOL = 1e-3
# cleanlab's constants (cleanlab/internal/constants.py), repeated so results match bit for bit.
_FLOATING_POINT_COMPARISON = 1e-6  # Slack of "p >= threshold" and of the final _reduce_issues.
_CONFIDENT_THRESHOLDS_LOWER_BOUND = 2 * _FLOATING_POINT_COMPARISON
_TINY_VALUE = 1e-100
_ABSENT_CLASS_THRESHOLD = 2  # No probability reaches it: nothing is counted into absent classes.


# --------------------------------------------------------------------------------------------------
# Baselines.
# --------------------------------------------------------------------------------------------------


def pt_threshold(p_t: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Flag examples whose given-label probability is below ``threshold``; score ``1 - p_t``.

    Args:
      p_t: ``[N]`` probabilities of the given labels.
      threshold: in (0, 1).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold!r} must be in (0, 1).")
    p_t = np.asarray(p_t, np.float64)
    return p_t < threshold, 1.0 - p_t


def predicted_neq_given(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flag examples whose argmax differs from the given label; score ``1 - p_t``.

    Unlike ``confident_learning(filter_by="predicted_neq_given")`` (cleanlab's), near-ties between
    the given label and the argmax are not unflagged.

    Args:
      probs: ``[N, C]`` predicted probabilities.
      labels: ``[N]`` given labels, integers in ``[0, C)``.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must be [N, C] and [N].")
    _check_label_values(labels, probs.shape[1])
    p_t = probs[np.arange(len(labels)), labels]
    return probs.argmax(axis=1) != labels, 1.0 - p_t


# --------------------------------------------------------------------------------------------------
# Confident Learning.
# --------------------------------------------------------------------------------------------------


def _check_label_values(labels: np.ndarray, num_classes: int) -> None:
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(
            f"labels must be in [0, {num_classes}) (the number of classes); got {bad[0]} "
            f"({bad.size} label(s) out of range)."
        )


def _check_inputs(labels: ArrayLike, pred_probs: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(labels int64 [N], pred_probs float [N, C])``.

    A floating ``pred_probs`` keeps its dtype (cleanlab computes in it, and float32 rounding moves
    ties); other dtypes become float64.
    """
    probs = np.asarray(pred_probs)
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] < 2:
        raise ValueError(
            f"pred_probs must have shape [N, C] with N >= 1 and C >= 2, got {list(probs.shape)}."
        )
    if labels.shape != probs.shape[:1]:
        raise ValueError(
            f"labels must have shape [N] = [{probs.shape[0]}] (rows of pred_probs), "
            f"got {list(labels.shape)}."
        )
    _check_label_values(labels, probs.shape[1])
    if not np.all(np.isfinite(probs)):
        raise ValueError("pred_probs must be finite, got NaN or inf.")
    low, high = probs.min(), probs.max()
    if low < -_FLOATING_POINT_COMPARISON or high > 1 + _FLOATING_POINT_COMPARISON:
        raise ValueError(f"pred_probs must be in [0, 1], got values in [{low}, {high}].")
    row_error = np.abs(probs.sum(axis=1, dtype=np.float64) - 1.0)
    if row_error.max() > ROW_SUM_ATOL:
        i = int(row_error.argmax())
        raise ValueError(
            f"Rows of pred_probs must sum to 1 (within {ROW_SUM_ATOL}); row {i} sums to "
            f"{probs[i].sum(dtype=np.float64)}."
        )
    return labels.astype(np.int64), probs


def _confident_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``[C]``: per class, the mean probability of the class over the examples labelled with it.

    cleanlab's ``count.get_confident_thresholds``: an absent class gets 2, so that nothing is
    counted into it; the ``np.mean`` of the same slice keeps its exact rounding.
    """
    present = set(np.unique(labels).tolist())
    thresholds = [
        np.mean(probs[:, k][labels == k]) if k in present else _ABSENT_CLASS_THRESHOLD
        for k in range(probs.shape[1])
    ]
    return np.clip(thresholds, a_min=_CONFIDENT_THRESHOLDS_LOWER_BOUND, a_max=None)


def _round_preserving_sum(floats: np.ndarray) -> np.ndarray:
    """Round to ints keeping the (rounded) sum: cleanlab's ``internal.util.round_preserving_sum``.

    The entries farthest from their rounding get the corrections, picked with the same
    ``np.argsort`` (default kind) so ties go the same way.
    """
    floats = np.asarray(floats, dtype=float)
    ints = floats.round()
    orig_sum = np.sum(floats).round()
    int_sum = np.sum(ints).round()
    while abs(int_sum - orig_sum) > _FLOATING_POINT_COMPARISON:
        diff = np.round(orig_sum - int_sum)
        increment = -1 if diff < 0.0 else 1
        changes = min(int(abs(diff)), len(floats))
        indices = np.argsort(floats - ints)[::-increment][:changes]
        ints[indices] += increment  # The indices are distinct.
        int_sum = np.sum(ints).round()
    return ints.astype(int)


def _round_preserving_row_totals(matrix: np.ndarray) -> np.ndarray:
    return np.apply_along_axis(_round_preserving_sum, 1, matrix).astype(int)


def _calibrate(cj: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """cleanlab's ``calibrate_confident_joint``: rows sum to the label counts, total to N."""
    label_counts = np.bincount(labels, minlength=len(cj))
    calibrated = (cj.T / np.clip(cj.sum(axis=1), a_min=_TINY_VALUE, a_max=None) * label_counts).T
    calibrated = (
        calibrated
        / np.clip(np.sum(calibrated), a_min=_TINY_VALUE, a_max=None)
        * int(label_counts.sum())
    )
    return _round_preserving_row_totals(calibrated)


def _confident_joint_and_off_diagonals(
    labels: np.ndarray, probs: np.ndarray, calibrate: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(confident joint [C, C] (given, true), indices of its off-diagonal examples)``.

    An example is confidently in class ``k`` when ``p_k >= t_k - 1e-6``; with several such classes
    it goes to its overall argmax (as in cleanlab, even when that argmax is not above its own
    threshold), with one to that class, with none it is not counted.
    """
    num_classes = probs.shape[1]
    thresholds = _confident_thresholds(labels, probs)
    above = probs >= thresholds - 1e-6
    num_above = above.sum(axis=1)
    counted = num_above > 0
    # argmax of a bool row = its first True: the single confident class where there is one.
    true_guess = np.where(num_above > 1, probs.argmax(axis=1), above.argmax(axis=1))[counted]
    given = labels[counted]
    # Counted as sklearn's confusion_matrix(true, given) and transposed, as in cleanlab: the
    # Fortran memory order changes the summation order of np.sum(calibrated) in calibration, and
    # with it the last bit of the total and, now and then, a rounding.
    by_true = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(by_true, (true_guess, given), 1)
    cj = by_true.T
    # At least one correctly labelled example per class (keeps calibration's division finite).
    np.fill_diagonal(cj, cj.diagonal().clip(min=1))
    if calibrate:
        cj = _calibrate(cj, labels)
    return cj, np.flatnonzero(counted)[true_guess != given]


def confident_joint(labels: ArrayLike, pred_probs: ArrayLike, calibrate: bool = True) -> np.ndarray:
    """Confident joint: int ``[C, C]``, entry ``(i, j)`` counts examples given ``i``, truly ``j``.

    Same as ``cleanlab.count.compute_confident_joint(labels, pred_probs, calibrate=calibrate)``.
    Calibrated, row ``i`` sums to the number of examples labelled ``i`` and the whole to ``N``.

    Args:
      labels: ``[N]`` given labels in ``[0, C)``.
      pred_probs: ``[N, C]`` out-of-sample predicted probabilities, rows summing to 1.
      calibrate: rescale the counts to the label counts (cleanlab's default).
    """
    labels, probs = _check_inputs(labels, pred_probs)
    return _confident_joint_and_off_diagonals(labels, probs, calibrate)[0]


def estimated_noise_rates(labels: ArrayLike, pred_probs: ArrayLike) -> tuple[float, np.ndarray]:
    """The noise rate estimated without clean labels: ``(overall, per given class [C])``.

    From the calibrated confident joint (:func:`confident_joint`): the off-diagonal share of the
    whole, and of each given class's row (NaN for a class with no examples).
    """
    joint = confident_joint(labels, pred_probs).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = 1.0 - np.diag(joint) / joint.sum(axis=1)
    return float(1.0 - np.trace(joint) / joint.sum()), per_class


# cleanlab's floors: of the denominators of its latent estimates, and of a class's prior.
_TINY = 1e-100
_PRIOR_FLOOR = 1e-6
# cleanlab's rounds of making the noise matrix, its inverse and the prior agree.
_CONVERGE_ROUNDS, _INVERSE_ROUNDS = 3, 5


def _clip_rates(matrix: np.ndarray) -> np.ndarray:
    """Off-diagonal rates clipped to ``[0, 0.9999]`` (the diagonal kept), columns renormalised."""
    clipped = np.clip(matrix, 0.0, 0.9999)
    np.fill_diagonal(clipped, np.diag(matrix))
    return clipped / np.clip(clipped.sum(axis=0), _TINY, None)


def _true_prior(ps: np.ndarray, noise: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """P(true label = k) from the diagonals ("cnt"), each at least 1e-6, summing to 1."""
    prior = np.diag(inverse) / np.clip(np.diag(noise), _TINY, None) * ps
    prior = np.clip(prior, _PRIOR_FLOOR, 1.0)
    return prior / np.clip(prior.sum(), _TINY, None)


def noise_matrix(labels: ArrayLike, pred_probs: ArrayLike) -> np.ndarray:
    """float64 ``[C, C]``: entry ``(i, j)`` estimates P(given label ``i`` | true label ``j``);
    each column sums to 1 (cleanlab's orientation), or to 0 for a class that no example is
    confidently counted as.

    From the calibrated confident joint (:func:`confident_joint`): its columns normalised, then
    made consistent with the inverse matrix and the true-class prior by cleanlab's fixed rounds.
    The same as ``cleanlab.count.estimate_py_and_noise_matrices_from_probabilities(labels,
    pred_probs)[1]`` at its defaults.
    """
    joint = confident_joint(labels, pred_probs).astype(np.float64)
    labels = np.asarray(labels)
    ps = np.bincount(labels, minlength=len(joint)) / len(labels)  # P(given label = k).
    noise = joint / np.clip(joint.sum(axis=0), _TINY, None)
    inverse = joint.T / np.clip(joint.sum(axis=1), _TINY, None)
    prior = _true_prior(ps, noise, inverse)
    noise, inverse = _clip_rates(noise), _clip_rates(inverse)
    for _ in range(_CONVERGE_ROUNDS):
        for _ in range(_INVERSE_ROUNDS):
            inverse = _clip_rates((noise * prior).T / np.clip(ps, _TINY, None))
            prior = _true_prior(ps, noise, inverse)
        noise = _clip_rates((inverse * ps).T / np.clip(prior, _TINY, None))
    return _clip_rates(noise)


def confused_pairs(
    given_label: ArrayLike, predicted_label: ArrayLike, is_label_issue: ArrayLike, top: int
) -> list[tuple[int, int, int]]:
    """The ``top`` most frequent ``(given, suggested, count)`` among the flagged examples
    (``[N]`` each), most first; ties by the class indices."""
    flagged = np.asarray(is_label_issue, bool)
    if not flagged.any():
        return []
    pairs = np.stack([np.asarray(given_label)[flagged], np.asarray(predicted_label)[flagged]], 1)
    unique, counts = np.unique(pairs, axis=0, return_counts=True)
    order = np.lexsort((unique[:, 1], unique[:, 0], -counts))[:top]
    return [(int(unique[k, 0]), int(unique[k, 1]), int(counts[k])) for k in order]


def _reduce_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """bool ``[N]``: the given label is the argmax once it gets a 1e-6 head start (unflag these)."""
    nudged = np.copy(probs)
    nudged[np.arange(len(labels)), labels] += _FLOATING_POINT_COMPARISON
    return nudged.argmax(axis=1) == labels


def _keep_at_least_n_per_class(cj: np.ndarray, n: int, frac_noise: float) -> np.ndarray:
    """Prune counts, int ``[C, C]`` indexed ``(true, given)`` (transposed confident joint).

    cleanlab's ``filter._keep_at_least_n_per_class`` and ``_reduce_prune_counts``: raise each
    diagonal entry to at least ``n`` (taking the increase evenly from the column's non-zero
    off-diagonal entries), then scale the off-diagonal entries by ``frac_noise`` (truncating),
    moving what is removed onto the diagonal so column totals are kept.
    """
    prune_counts = cj.T
    diagonal = np.diagonal(prune_counts)
    new_diagonal = np.maximum(diagonal, n)
    diff_per_col = new_diagonal - diagonal
    num_noise_rates_per_col = np.maximum(np.count_nonzero(prune_counts, axis=0) - 1.0, 1.0)
    new_mat = prune_counts - diff_per_col / num_noise_rates_per_col
    new_mat[new_mat < 0] = 0
    np.fill_diagonal(new_mat, new_diagonal)
    # _reduce_prune_counts.
    # Diagonal first restored, so that the column sums below take only the off-diagonal losses.
    reduced = new_mat * frac_noise
    np.fill_diagonal(reduced, new_mat.diagonal())
    np.fill_diagonal(reduced, new_mat.diagonal() + np.sum(new_mat - reduced, axis=0))
    return _round_preserving_row_totals(reduced.astype(int)).astype(int)


def _prune_by_class(probs_k: np.ndarray, k: int, prune_counts: np.ndarray) -> np.ndarray:
    """bool ``[n_k]``: the ``n_k - prune_counts[k, k]`` class-``k`` examples of lowest ``p_k``."""
    mask = np.zeros(len(probs_k), dtype=bool)
    num_issues = len(probs_k) - prune_counts[k, k]
    if num_issues >= 1:
        mask[np.argsort(probs_k[:, k])[:num_issues]] = True
    return mask


def _prune_by_noise_rate(probs_k: np.ndarray, k: int, prune_counts: np.ndarray) -> np.ndarray:
    """bool ``[n_k]``: for each other class ``j``, the ``prune_counts[j, k]`` class-``k`` examples
    with the largest ``p_j - p_k``."""
    mask = np.zeros(len(probs_k), dtype=bool)
    for j in range(probs_k.shape[1]):
        num_to_prune = prune_counts[j, k]
        if j != k and num_to_prune > 0:
            margin = probs_k[:, j] - probs_k[:, k]
            mask[np.argsort(-margin)[:num_to_prune]] = True
    return mask


def _quality_score(labels: np.ndarray, probs: np.ndarray, rank_by: str) -> np.ndarray:
    """float64 ``[N]``, higher = more likely an error: ``1 -`` cleanlab's label quality score."""
    n = len(labels)
    p_t = probs[np.arange(n), labels].astype(np.float64)
    if rank_by == "self_confidence":
        return 1.0 - p_t
    others = probs.astype(np.float64)  # A copy: the given label is masked out below.
    others[np.arange(n), labels] = -np.inf
    # cleanlab's normalized margin is (p_t - max_{k != t} p_k + 1) / 2.
    return 1.0 - (p_t - others.max(axis=1) + 1) / 2


def confident_learning(
    labels: ArrayLike,
    pred_probs: ArrayLike,
    *,
    filter_by: str = "prune_by_noise_rate",
    frac_noise: float = 1.0,
    rank_by: str = "self_confidence",
    min_examples_per_class: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Confident Learning: flag likely label errors from out-of-sample predicted probabilities.

    Flags exactly what ``cleanlab.filter.find_label_issues(labels, pred_probs,
    filter_by=filter_by, frac_noise=frac_noise, min_examples_per_class=min_examples_per_class)``
    flags (cleanlab 2.9). ``filter_by``:

    - ``"prune_by_noise_rate"``: for each off-diagonal cell ``(given k, true j)`` of the prune
      counts, the class-``k`` examples with the largest ``p_j - p_k``.
    - ``"prune_by_class"``: in each class ``k``, its off-diagonal total of examples with the
      lowest ``p_k``.
    - ``"both"``: flagged by both of the above.
    - ``"confident_learning"``: the examples counted off the diagonal of the confident joint.
    - ``"predicted_neq_given"``: argmax differs from the given label.

    Prune counts are the calibrated confident joint, transposed, with each class kept to at least
    ``min_examples_per_class`` examples and the off-diagonals scaled by ``frac_noise``; classes
    with at most ``max(min_examples_per_class, 1)`` examples are never pruned by the first three.
    In the end, as in cleanlab, an example is unflagged when its given label is the argmax once
    given a 1e-6 head start.

    Args:
      labels: ``[N]`` given labels, integers in ``[0, C)``; classes may be absent.
      pred_probs: ``[N, C]`` out-of-sample predicted probabilities, rows summing to 1 (within
        :data:`ROW_SUM_ATOL`). A float32 array is computed in float32, like cleanlab.
      filter_by: one of :data:`FILTER_BY`.
      frac_noise: in (0, 1]: keep about this fraction of the issues (only for
        ``prune_by_noise_rate``, ``prune_by_class`` and ``both``; ignored otherwise, as by
        cleanlab).
      rank_by: the score, one of :data:`RANK_BY`: ``"self_confidence"`` gives ``1 - p_t``,
        ``"normalized_margin"`` gives ``1 - (p_t - max_{k != t} p_k + 1) / 2``.
      min_examples_per_class: a non-negative int.

    Returns:
      ``(is_flagged bool [N], score float64 [N])``, NumPy; higher score = more likely an error.
    """
    if filter_by not in FILTER_BY:
        raise ValueError(f"filter_by={filter_by!r} is not one of {FILTER_BY}.")
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by={rank_by!r} is not one of {RANK_BY}.")
    if not 0.0 < frac_noise <= 1.0:
        raise ValueError(f"frac_noise={frac_noise!r} must be in (0, 1].")
    if (
        isinstance(min_examples_per_class, bool)
        or not isinstance(min_examples_per_class, int | np.integer)
        or min_examples_per_class < 0
    ):
        raise ValueError(
            f"min_examples_per_class={min_examples_per_class!r} must be a non-negative int."
        )
    labels, probs = _check_inputs(labels, pred_probs)
    n = len(labels)
    score = _quality_score(labels, probs, rank_by)

    cj, off_diagonal = _confident_joint_and_off_diagonals(labels, probs, calibrate=True)
    if filter_by == "confident_learning":
        is_flagged = np.zeros(n, dtype=bool)
        is_flagged[off_diagonal] = True
    elif filter_by == "predicted_neq_given":
        is_flagged = probs.argmax(axis=1) != labels
    else:
        prune_counts = _keep_at_least_n_per_class(cj, min_examples_per_class, frac_noise)
        by_class = np.zeros(n, dtype=bool)
        by_noise_rate = np.zeros(n, dtype=bool)
        for k in range(probs.shape[1]):
            in_k = labels == k
            probs_k = probs[in_k]
            # cleanlab skips classes of at most min_examples_per_class examples, and only writes
            # back masks of length > 1: a class of one example is never flagged here.
            if len(probs_k) <= max(min_examples_per_class, 1):
                continue
            if filter_by in ("prune_by_class", "both"):
                by_class[in_k] = _prune_by_class(probs_k, k, prune_counts)
            if filter_by in ("prune_by_noise_rate", "both"):
                by_noise_rate[in_k] = _prune_by_noise_rate(probs_k, k, prune_counts)
        is_flagged = {
            "prune_by_class": by_class,
            "prune_by_noise_rate": by_noise_rate,
            "both": by_class & by_noise_rate,
        }[filter_by]
    is_flagged &= ~_reduce_issues(labels, probs)
    return is_flagged, score


# --------------------------------------------------------------------------------------------------
# Area Under the Margin (AUM).
# --------------------------------------------------------------------------------------------------


def _rng(key_or_seed: Any) -> np.random.Generator:
    """``np.random.default_rng`` seeded by an int, or by the key data of a JAX PRNG key."""
    if isinstance(key_or_seed, int | np.integer) and not isinstance(key_or_seed, bool):
        if key_or_seed < 0:
            raise ValueError(f"seed={key_or_seed!r} must be a non-negative int or a JAX key.")
        return np.random.default_rng(int(key_or_seed))
    key = key_or_seed
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    data = np.asarray(key)
    if data.dtype != np.uint32 or data.ndim != 1:
        raise ValueError(
            f"key_or_seed must be a non-negative int or a single JAX PRNG key, got {key_or_seed!r}."
        )
    return np.random.default_rng(data)


def assign_threshold_examples(
    key_or_seed: Any, labels: ArrayLike, num_classes: int, *, num_runs: int = 2
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Choose the AUM threshold examples of each run: disjoint sets moved to a fake class ``C``.

    Pleiss et al. give ``N // (C + 1)`` examples the extra label ``C`` (the model gets ``C + 1``
    outputs); these are mislabelled by construction, and their AUMs set the flagging threshold. A
    threshold example cannot be judged itself, so each run takes its own set, disjoint from the
    others': with ``num_runs >= 2`` every example is scored normally in at least one run.

    The sets are consecutive slices of one ``np.random.default_rng(seed).permutation(N)``; the seed
    is a ``SeedSequence`` of the int, or of a JAX key's ``jax.random.key_data``, tagged with its
    kind (``spawn_key`` 0 for ints, 1 for keys): the same key always gives the same sets, but a
    key and an int never give the same sets.

    Args:
      key_or_seed: a non-negative int, or a JAX PRNG key (typed or raw uint32).
      labels: ``[N]`` given labels in ``[0, num_classes)``.
      num_classes: ``C``, the number of real classes.
      num_runs: a positive int, at most ``N // (N // (C + 1))`` (the sets must fit).

    Returns:
      ``num_runs`` pairs ``(is_threshold bool [N], threshold_labels int32 [N])``, NumPy, where
      ``threshold_labels`` is ``labels`` with ``C`` on the threshold examples.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(f"num_classes={num_classes!r} must be an int >= 2.")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an int >= 2.")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape [N], got {list(labels.shape)}.")
    _check_label_values(labels, num_classes)
    n = len(labels)
    size = n // (num_classes + 1)
    if size == 0:
        raise ValueError(
            f"N={n} examples give N // (C + 1) = 0 threshold examples for C={num_classes}; "
            f"need N >= {num_classes + 1}."
        )
    if isinstance(num_runs, bool) or not isinstance(num_runs, int | np.integer) or num_runs < 1:
        raise ValueError(f"num_runs={num_runs!r} must be a positive int.")
    if num_runs * size > n:
        raise ValueError(
            f"num_runs={num_runs} disjoint sets of {size} threshold examples do not fit in N={n}; "
            f"num_runs must be at most {n // size}."
        )
    # The kind's tag word keeps ints and keys apart: the entropy alone is zero-padded, so int
    # t * 2**32 and key data [0, t] would hash alike.
    entropy = _rng(key_or_seed).bit_generator.seed_seq.entropy  # Validated: the int or key data.
    kind = 0 if isinstance(key_or_seed, int | np.integer) else 1
    order = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(kind,))).permutation(n)
    runs = []
    for r in range(num_runs):
        is_threshold = np.zeros(n, dtype=bool)
        is_threshold[order[r * size : (r + 1) * size]] = True
        runs.append((is_threshold, np.where(is_threshold, num_classes, labels).astype(np.int32)))
    return runs


def margins(logits: ArrayLike, labels: ArrayLike) -> Array:
    """Margin ``[N]``: the assigned-label logit minus the largest other logit (jittable).

    AUM uses logits, not probabilities. Negative when another class wins. For threshold examples
    pass their fake label ``C`` (the ``threshold_labels`` of :func:`assign_threshold_examples`).

    Args:
      logits: ``[N, C']`` with ``C' >= 2``.
      labels: ``[N]`` integers in ``[0, C')`` (not checked under ``jit``).
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim != 2 or logits.shape[1] < 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"logits {list(logits.shape)} and labels {list(labels.shape)} must be [N, C'] "
            "(C' >= 2) and [N]."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
    is_assigned = jax.nn.one_hot(labels, logits.shape[1], dtype=bool)
    assigned = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    largest_other = jnp.max(jnp.where(is_assigned, -jnp.inf, logits), axis=1)
    return assigned - largest_other


def init_aum(num_examples: int, dtype: Any = jnp.float32) -> tuple[Array, Array]:
    """Zero accumulators ``(aum_sum [N] dtype, count [N] int32)`` for :func:`update_aum`."""
    return jnp.zeros(num_examples, dtype), jnp.zeros(num_examples, jnp.int32)


def update_aum(
    aum_sum: ArrayLike, count: ArrayLike, indices: ArrayLike, batch_margins: ArrayLike
) -> tuple[Array, Array]:
    """Add a batch's margins to the running sums (pure, jittable).

    Scatter-adds, so an index repeated within a batch (sampling with replacement) counts each
    time. Call once per training step, or once per epoch with that epoch's margins (the
    training programs do: each epoch's sums go to the training record).

    Args:
      aum_sum: ``[N]`` float sums of margins so far.
      count: ``[N]`` int number of margins summed so far.
      indices: ``[B]`` dataset indices of the batch examples.
      batch_margins: ``[B]`` their margins (:func:`margins`).

    Returns:
      The updated ``(aum_sum, count)``.
    """
    aum_sum = jnp.asarray(aum_sum)
    count = jnp.asarray(count)
    indices = jnp.asarray(indices)
    batch_margins = jnp.asarray(batch_margins, aum_sum.dtype)
    if indices.shape != batch_margins.shape or indices.ndim != 1:
        raise ValueError(
            f"indices {list(indices.shape)} and batch_margins {list(batch_margins.shape)} must "
            "both be [B]."
        )
    return (
        aum_sum.at[indices].add(batch_margins),
        count.at[indices].add(jnp.ones(indices.shape, count.dtype)),
    )


def aum_sums_from_epoch(
    margin_sum_history: ArrayLike, margin_count_history: ArrayLike, first_epoch: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(aum_sum float64 [N], count int64 [N])`` of per-epoch margin sums from ``first_epoch``.

    The reference AUM (asappresearch/aum) leaves the first epoch out (``first_epoch=1``): its
    margins mostly reflect the initialisation. A history no longer than ``first_epoch`` epochs
    is counted whole rather than left empty.

    Args:
      margin_sum_history: ``[E, N]`` per epoch, the sum of each example's training margins.
      margin_count_history: ``[E, N]`` per epoch, how many margins were summed.
      first_epoch: the first epoch (0-based) counted.
    """
    sums = np.asarray(margin_sum_history, np.float64)
    counts = np.asarray(margin_count_history, np.int64)
    if sums.shape != counts.shape or sums.ndim != 2:
        raise ValueError(
            f"margin sums {list(sums.shape)} and counts {list(counts.shape)} must both be [E, N]."
        )
    first = first_epoch if len(sums) > first_epoch else 0
    return sums[first:].sum(axis=0), counts[first:].sum(axis=0)


def aum_scores(aum_sum: ArrayLike, count: ArrayLike) -> Array:
    """AUM ``[N]``: the mean margin over the updates seen; NaN for examples never seen."""
    aum_sum = jnp.asarray(aum_sum)
    count = jnp.asarray(count)
    return jnp.where(count > 0, aum_sum / jnp.maximum(count, 1), jnp.nan)


def aum_threshold(aum: ArrayLike, is_threshold: ArrayLike, percentile: float = 99) -> float:
    """The ``percentile``-th percentile of the threshold examples' AUM (NaNs left out).

    Pleiss et al. flag an example when its AUM is below the 99th percentile of the threshold
    examples', mislabelled by construction. Percentiles are NumPy's default (linear).
    """
    aum = np.asarray(aum, np.float64)
    is_threshold = np.asarray(is_threshold)
    if is_threshold.dtype != np.bool_ or is_threshold.shape != aum.shape or aum.ndim != 1:
        raise ValueError(
            f"aum {list(aum.shape)} and is_threshold {list(is_threshold.shape)} "
            f"({is_threshold.dtype}) must be float [N] and bool [N]."
        )
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile={percentile!r} must be in [0, 100].")
    values = aum[is_threshold]
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("No threshold example has a finite AUM (none marked, or none seen).")
    return float(np.percentile(values, percentile))


# AUM's decision rules: "reference" (asappresearch/aum: an example is flagged when every run that
# judges it flags it, margins of the first epoch left out), "mean" (the mean of threshold - AUM
# over the runs is positive, every epoch counted).
AUM_RULES = ("reference", "mean")


def aum_detect(
    aum_per_run: list[ArrayLike],
    is_threshold_per_run: list[ArrayLike],
    percentile: float = 99,
    rule: str = "reference",
) -> tuple[np.ndarray, np.ndarray]:
    """Flag examples whose AUM is below the threshold-example percentile of their runs.

    Each example is judged from the runs in which it was not a threshold example and has a finite
    AUM. Per run the score is ``threshold - AUM`` (a margin below the run's own threshold is
    positive, so runs with differently scaled logits are comparable). With ``rule="reference"``
    (asappresearch/aum) an example is flagged when every run that judges it flags it, and its
    score is the smallest of its runs' scores; with ``rule="mean"`` its score is the mean over
    its runs and it is flagged when that is positive (a superset). With one run both are: AUM
    below that run's threshold. An example judged in no run gets score NaN and is not flagged.

    Args:
      aum_per_run: ``R`` arrays ``[N]`` of AUM (:func:`aum_scores`), one per run.
      is_threshold_per_run: ``R`` bool arrays ``[N]`` (:func:`assign_threshold_examples`).
      percentile: in [0, 100]; 99 as in Pleiss et al.
      rule: one of :data:`AUM_RULES`.

    Returns:
      ``(is_flagged bool [N], score float64 [N])``, NumPy; higher score = more suspicious.
    """
    if len(aum_per_run) != len(is_threshold_per_run) or not aum_per_run:
        raise ValueError(
            f"Need the same positive number of AUM and is_threshold arrays, got "
            f"{len(aum_per_run)} and {len(is_threshold_per_run)}."
        )
    if rule not in AUM_RULES:
        raise ValueError(f"rule={rule!r} is not one of {AUM_RULES}.")
    total = lowest = num_judged = None
    for aum, is_threshold in zip(aum_per_run, is_threshold_per_run, strict=True):
        threshold = aum_threshold(aum, is_threshold, percentile)
        aum = np.asarray(aum, np.float64)
        if total is None:
            total, num_judged = np.zeros_like(aum), np.zeros(aum.shape, np.int64)
            lowest = np.full_like(aum, np.inf)
        elif aum.shape != total.shape:
            raise ValueError(f"All runs must have the same N, got {total.shape} and {aum.shape}.")
        judged = ~np.asarray(is_threshold) & np.isfinite(aum)
        total += np.where(judged, threshold - aum, 0.0)
        lowest = np.where(judged, np.minimum(lowest, threshold - aum), lowest)
        num_judged += judged
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / num_judged
    score = np.where(num_judged > 0, lowest if rule == "reference" else mean, np.nan)
    return np.nan_to_num(score, nan=-np.inf) > 0, score
