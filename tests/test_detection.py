"""Tests for robust_losses_jax.detection: baselines, Confident Learning against cleanlab, AUM."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cleanlab import count as cl_count
from cleanlab import filter as cl_filter
from cleanlab import rank as cl_rank

from robust_losses_jax import detection

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "label_errors" / "mnist"
KWARGS = (
    {},
    {"frac_noise": 0.5},
    {"frac_noise": 0.25, "min_examples_per_class": 5},
    {"min_examples_per_class": 0},
    {"min_examples_per_class": 30},
)


def cleanlab_mask(labels, pred_probs, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Rare classes and ignored frac_noise warn.
        return cl_filter.find_label_issues(labels, pred_probs, n_jobs=1, **kwargs)


def assert_agrees_with_cleanlab(labels, pred_probs, kwargs_list=KWARGS):
    for kwargs in kwargs_list:
        for filter_by in detection.FILTER_BY:
            expected = cleanlab_mask(labels, pred_probs, filter_by=filter_by, **kwargs)
            is_flagged, score = detection.confident_learning(
                labels, pred_probs, filter_by=filter_by, **kwargs
            )
            chex.assert_shape([is_flagged, score], (len(labels),))
            assert is_flagged.dtype == np.bool_
            assert np.all(np.isfinite(score))
            np.testing.assert_array_equal(
                np.flatnonzero(is_flagged),
                np.flatnonzero(expected),
                err_msg=f"filter_by={filter_by} {kwargs}",
            )


# --------------------------------------------------------------------------------------------------
# Baselines.
# --------------------------------------------------------------------------------------------------


def test_pt_threshold():
    is_flagged, score = detection.pt_threshold(jnp.array([0.1, 0.5, 0.9]), 0.5)
    np.testing.assert_array_equal(is_flagged, [True, False, False])
    np.testing.assert_allclose(score, [0.9, 0.5, 0.1], atol=1e-7)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_pt_threshold_rejects_threshold(threshold):
    with pytest.raises(ValueError, match=r"threshold=.* must be in \(0, 1\)"):
        detection.pt_threshold(np.array([0.5]), threshold)


def test_predicted_neq_given():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.5, 0.0]])
    is_flagged, score = detection.predicted_neq_given(jnp.asarray(probs), np.array([0, 1, 1]))
    np.testing.assert_array_equal(is_flagged, [False, True, True])  # A tie goes to class 0.
    np.testing.assert_allclose(score, [0.3, 0.7, 0.5])


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.full((3,), 0.5), np.zeros(3, int), r"must be \[N, C\] and \[N\]"),
        (np.full((3, 2), 0.5), np.zeros(4, int), r"must be \[N, C\] and \[N\]"),
        (np.full((3, 2), 0.5), np.array([0, 1, 2]), r"labels must be in \[0, 2\).*got 2"),
        (np.full((3, 2), 0.5), np.array([0, -1, 1]), r"labels must be in \[0, 2\).*got -1"),
        (np.full((3, 2), 0.5), np.array([0.0, 1.0, 1.0]), "labels must be integers"),
    ],
)
def test_predicted_neq_given_rejects(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        detection.predicted_neq_given(probs, labels)


# --------------------------------------------------------------------------------------------------
# Confident Learning: constructed cases.
# --------------------------------------------------------------------------------------------------


def confident_model(num_classes=4, per_class=25, flips=(3, 30, 31, 77, 99), peak=0.97):
    """A model sure of the true class of every example, and the given labels with some flipped."""
    true = np.repeat(np.arange(num_classes), per_class)
    probs = np.full((len(true), num_classes), (1 - peak) / (num_classes - 1))
    probs[np.arange(len(true)), true] = peak
    given = true.copy()
    flips = np.array(flips)
    given[flips] = (true[flips] + 1 + flips % (num_classes - 1)) % num_classes
    assert np.all(given[flips] != true[flips])
    return given, probs, flips


@pytest.mark.parametrize("filter_by", detection.FILTER_BY)
@pytest.mark.parametrize("peak", [0.97, 1.0])
def test_confident_model_flags_exactly_the_flips(filter_by, peak):
    given, probs, flips = confident_model(peak=peak)
    is_flagged, score = detection.confident_learning(given, probs, filter_by=filter_by)
    np.testing.assert_array_equal(np.flatnonzero(is_flagged), flips)
    # Self-confidence: 1 - p_t, highest on the flipped examples.
    np.testing.assert_allclose(score, 1 - probs[np.arange(len(given)), given])
    assert score[flips].min() > np.delete(score, flips).max()


def test_confident_model_frac_noise_and_confident_joint():
    given, probs, flips = confident_model()
    cj = detection.confident_joint(given, probs)
    # Row = given label, column = true label: one off-diagonal count per flip.
    expected = np.diag(np.bincount(given, minlength=4) - np.bincount(given[flips], minlength=4))
    np.add.at(expected, (given[flips], np.repeat(np.arange(4), 25)[flips]), 1)
    np.testing.assert_array_equal(cj, expected)
    # frac_noise=0.5: every off-diagonal cell holds one example and int(0.5 * 1) = 0, so no cell
    # is pruned by noise rate; by class, the kept diagonal is truncated too (24.5 -> 24), so each
    # given class with flips loses ceil(half) of them: one of class 2's two (30 and 77), tied.
    expected = {"prune_by_noise_rate": [], "prune_by_class": [3, 30, 31, 99], "both": []}
    for filter_by, indices in expected.items():
        is_flagged, _ = detection.confident_learning(
            given, probs, filter_by=filter_by, frac_noise=0.5
        )
        np.testing.assert_array_equal(np.flatnonzero(is_flagged), indices)
        np.testing.assert_array_equal(
            is_flagged, cleanlab_mask(given, probs, filter_by=filter_by, frac_noise=0.5)
        )


def test_normalized_margin_score():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.25, 0.25, 0.5]])
    _, score = detection.confident_learning(
        np.array([0, 0, 2]), probs, filter_by="confident_learning", rank_by="normalized_margin"
    )
    # 1 - (p_t - max_{k != t} p_k + 1) / 2.
    np.testing.assert_allclose(score, [1 - 1.3 / 2, 1 - 0.7 / 2, 1 - 1.25 / 2])


def test_near_ties_are_unflagged():
    """cleanlab's last step unflags an example whose given label is within 1e-6 of the argmax."""
    probs = np.array([[0.5, 0.5], [0.5 + 2e-7, 0.5 - 2e-7], [0.9, 0.1], [0.1, 0.9]] * 3)
    labels = np.array([1, 1, 0, 1] * 3)
    assert detection.predicted_neq_given(probs, labels)[0].sum() == 6
    is_flagged, _ = detection.confident_learning(labels, probs, filter_by="predicted_neq_given")
    assert not is_flagged.any()
    np.testing.assert_array_equal(
        is_flagged, cleanlab_mask(labels, probs, filter_by="predicted_neq_given")
    )


def test_jax_and_numpy_inputs_agree():
    given, probs, _ = confident_model()
    probs32 = (probs * np.linspace(0.9, 1.1, 4)).astype(np.float32)
    probs32 /= probs32.sum(axis=1, keepdims=True)
    for filter_by in detection.FILTER_BY:
        a = detection.confident_learning(given, probs32, filter_by=filter_by)
        b = detection.confident_learning(
            jnp.asarray(given, jnp.int32), jnp.asarray(probs32), filter_by=filter_by
        )
        chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"filter_by": "bogus"}, r"filter_by='bogus' is not one of .*prune_by_class"),
        ({"rank_by": "entropy"}, r"rank_by='entropy' is not one of .*normalized_margin"),
        ({"frac_noise": 0.0}, r"frac_noise=0.0 must be in \(0, 1\]"),
        ({"frac_noise": 1.5}, r"frac_noise=1.5 must be in \(0, 1\]"),
        ({"min_examples_per_class": -1}, "min_examples_per_class=-1 must be a non-negative int"),
        ({"min_examples_per_class": 1.5}, "min_examples_per_class=1.5 must be"),
    ],
)
def test_confident_learning_rejects_options(kwargs, match):
    given, probs, _ = confident_model()
    with pytest.raises(ValueError, match=match):
        detection.confident_learning(given, probs, **kwargs)


def bad_inputs():
    probs = np.full((4, 2), 0.5)
    labels = np.array([0, 1, 0, 1])
    unnormalised = probs.copy()
    unnormalised[2] = [0.5, 0.7]
    with_nan = probs.copy()
    with_nan[1, 0] = np.nan
    negative = np.array([[1.2, -0.2]] * 4)
    return [
        (labels, probs[:, 0], r"pred_probs must have shape \[N, C\].*got \[4\]"),
        (labels, probs[:, :1], r"C >= 2, got \[4, 1\]"),
        (labels[:3], probs, r"labels must have shape \[N\] = \[4\].*got \[3\]"),
        (np.array([0, 1, 2, 1]), probs, r"labels must be in \[0, 2\).*got 2"),
        (np.array([0, -1, 0, 1]), probs, r"labels must be in \[0, 2\).*got -1"),
        (labels.astype(float), probs, "labels must be integers, got dtype float64"),
        (labels, unnormalised, r"row 2 sums to 1.2"),
        (labels, with_nan, "finite"),
        (labels, negative, r"must be in \[0, 1\], got values in \[-0.2"),
    ]


@pytest.mark.parametrize(("labels", "probs", "match"), bad_inputs())
def test_confident_learning_rejects_inputs(labels, probs, match):
    with pytest.raises(ValueError, match=match):
        detection.confident_learning(labels, probs)
    with pytest.raises(ValueError, match=match):
        detection.confident_joint(labels, probs)


# --------------------------------------------------------------------------------------------------
# Confident Learning: exact agreement with cleanlab.
# --------------------------------------------------------------------------------------------------


def random_case(seed: int):
    """A varied (labels, pred_probs): uniform or Dirichlet-peaked, absent or tiny classes, ties."""
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 11))
    n = int(rng.choice([20, 50, 200, 700, 2000]))
    kind = seed % 6
    if kind == 0:  # Uniformly random rows: no structure at all.
        probs = rng.random((n, num_classes))
        labels = rng.integers(0, num_classes, n)
    else:  # A trained-looking model: a peak on the true class, 20% of labels flipped.
        true = rng.integers(0, num_classes, n)
        probs = rng.dirichlet(np.full(num_classes, 0.3), n)
        probs = 0.3 * probs + np.eye(num_classes)[true] * rng.random((n, 1))
        labels = np.where(rng.random(n) < 0.2, rng.integers(0, num_classes, n), true)
    if kind == 2:  # The last class absent from the labels.
        labels[labels == num_classes - 1] = 0
    if kind == 3:  # Class 1 with two examples, class 0 with one.
        labels[labels <= 1] = num_classes - 1
        labels[:2] = 1
        labels[2] = 0
    if kind == 4:  # Coarse probabilities: many exact ties in thresholds and margins.
        probs = np.round(probs / probs.sum(axis=1, keepdims=True), 1) + 1e-3
    probs /= probs.sum(axis=1, keepdims=True)
    if kind == 5:
        probs = probs.astype(np.float32)
    if len(np.unique(labels)) < 2:  # cleanlab needs two classes.
        labels[0] = 1 - labels[0] if labels[0] < 2 else 0
    return labels, probs


@pytest.mark.parametrize("seed", range(24))
def test_agrees_with_cleanlab_on_random_probabilities(seed):
    labels, probs = random_case(seed)
    assert_agrees_with_cleanlab(labels, probs)


@pytest.mark.parametrize("seed", range(6))
def test_confident_joint_agrees_with_cleanlab(seed):
    labels, probs = random_case(seed)
    for calibrate in (True, False):
        np.testing.assert_array_equal(
            detection.confident_joint(labels, probs, calibrate=calibrate),
            cl_count.compute_confident_joint(labels, probs, calibrate=calibrate),
        )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rank_by", detection.RANK_BY)
def test_scores_match_cleanlab(seed, rank_by):
    labels, probs = random_case(seed)
    _, score = detection.confident_learning(labels, probs, rank_by=rank_by)
    theirs = cl_rank.get_label_quality_scores(labels, probs, method=rank_by)
    tol = 1e-12 if probs.dtype == np.float64 else 1e-6
    np.testing.assert_allclose(score, 1.0 - theirs, rtol=0, atol=tol)


@pytest.mark.parametrize("seed", range(8))
def test_noise_matrix_is_cleanlabs(seed):
    labels, probs = random_case(seed)
    matrix = detection.noise_matrix(labels, probs)
    want = cl_count.estimate_py_and_noise_matrices_from_probabilities(labels, probs)[1]
    np.testing.assert_allclose(matrix, want, rtol=0, atol=1e-12)
    sums = matrix.sum(axis=0)  # 0 for a class that no example is estimated to truly be.
    assert np.all(np.isclose(sums, 1.0, atol=1e-12) | (sums == 0)), sums


def test_noise_matrix_of_known_counts():
    # Confident, exact probabilities: 4 examples truly 0 (one given 1), 2 truly 1.
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1]] * 3 + [[0.9, 0.1]] + [[0.1, 0.9]] * 2)
    matrix = detection.noise_matrix(labels, probs)
    np.testing.assert_allclose(matrix, [[0.75, 0.0], [0.25, 1.0]])


def test_confused_pairs_counts_the_flagged_most_first():
    given = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    predicted = np.array([1, 1, 2, 0, 0, 0, 2, 2])
    flagged = given != predicted
    assert detection.confused_pairs(given, predicted, flagged, top=2) == [(0, 1, 2), (1, 0, 2)]
    assert detection.confused_pairs(given, predicted, flagged, top=9)[2:] == [(0, 2, 1), (2, 0, 1)]
    assert detection.confused_pairs(given, predicted, np.zeros(8, bool), top=3) == []


def test_mnist_noise_matrix_is_cleanlabs(mnist):
    labels, probs, _ = mnist
    want = cl_count.estimate_py_and_noise_matrices_from_probabilities(labels, probs)[1]
    np.testing.assert_allclose(detection.noise_matrix(labels, probs), want, rtol=0, atol=1e-12)


@st.composite
def label_problems(draw):
    """(labels, probs) with N in [2, 80], C in [2, 8]; probabilities often tie (0, 0.1, 0.5, 1)."""
    n = draw(st.integers(2, 80))
    num_classes = draw(st.integers(2, 8))
    entries = st.one_of(st.sampled_from([0.0, 0.1, 0.5, 1.0]), st.floats(0, 1))
    raw = draw(hnp.arrays(np.float64, (n, num_classes), elements=entries)) + 1e-9
    labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, num_classes - 1)))
    hypothesis.assume(len(np.unique(labels)) >= 2)  # cleanlab needs two classes.
    return labels, raw / raw.sum(axis=1, keepdims=True)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    case=label_problems(),
    frac_noise=st.sampled_from([1.0, 0.7, 0.3]),
    min_examples_per_class=st.integers(0, 4),
)
def test_fuzz_agrees_with_cleanlab(case, frac_noise, min_examples_per_class):
    labels, probs = case
    kwargs = {"frac_noise": frac_noise, "min_examples_per_class": min_examples_per_class}
    assert_agrees_with_cleanlab(labels, probs, [kwargs])


# --------------------------------------------------------------------------------------------------
# Confident Learning: the MNIST test set with human-reviewed label errors (labelerrors.com).
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist():
    if not MNIST_DIR.is_dir():
        pytest.skip(f"MNIST label-error benchmark not found at {MNIST_DIR}")
    probs = np.load(MNIST_DIR / "pred_probs.npy")
    labels = np.load(MNIST_DIR / "given_labels.npy")
    reviewed = json.loads((MNIST_DIR / "mturk.json").read_text())
    # A confirmed error: fewer than 3 of the 5 reviewers chose the given label.
    confirmed = {r["id"] for r in reviewed if r["mturk"]["given"] < 3}
    assert (len(reviewed), len(confirmed)) == (100, 15)
    return labels, probs, confirmed


@pytest.mark.parametrize(
    ("filter_by", "num_flagged", "num_confirmed"),
    [
        ("prune_by_noise_rate", 15, 7),
        ("prune_by_class", 15, 7),
        ("both", 15, 7),
        ("confident_learning", 15, 7),
        ("predicted_neq_given", 87, 15),
    ],
)
def test_mnist_benchmark(mnist, filter_by, num_flagged, num_confirmed):
    labels, probs, confirmed = mnist
    is_flagged, score = detection.confident_learning(labels, probs, filter_by=filter_by)
    np.testing.assert_array_equal(is_flagged, cleanlab_mask(labels, probs, filter_by=filter_by))
    flagged = set(np.flatnonzero(is_flagged).tolist())
    assert (len(flagged), len(flagged & confirmed)) == (num_flagged, num_confirmed)
    assert np.all(np.isfinite(score))


def test_mnist_agrees_with_cleanlab_other_options(mnist):
    labels, probs, _ = mnist
    assert_agrees_with_cleanlab(labels, probs, KWARGS[1:3])
    for rank_by in detection.RANK_BY:
        _, score = detection.confident_learning(labels, probs, rank_by=rank_by)
        theirs = cl_rank.get_label_quality_scores(labels, probs, method=rank_by)
        np.testing.assert_allclose(score, 1.0 - theirs, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# AUM.
# --------------------------------------------------------------------------------------------------


def test_threshold_examples_bookkeeping():
    num_classes = 9
    labels = np.random.default_rng(0).integers(0, num_classes, 1003)
    runs = detection.assign_threshold_examples(7, labels, num_classes)
    assert len(runs) == 2
    size = 1003 // (num_classes + 1)
    for is_threshold, threshold_labels in runs:
        chex.assert_shape([is_threshold, threshold_labels], (1003,))
        assert is_threshold.dtype == np.bool_
        assert is_threshold.sum() == size
        np.testing.assert_array_equal(threshold_labels == num_classes, is_threshold)
        np.testing.assert_array_equal(threshold_labels[~is_threshold], labels[~is_threshold])
    assert not (runs[0][0] & runs[1][0]).any()  # Disjoint,
    assert ((~runs[0][0]) | (~runs[1][0])).all()  # so every example is scored in some run.
    chex.assert_trees_all_equal(runs, detection.assign_threshold_examples(7, labels, num_classes))
    other = detection.assign_threshold_examples(8, labels, num_classes)
    assert not np.array_equal(runs[0][0], other[0][0])


def test_threshold_examples_from_jax_keys():
    labels = np.arange(100) % 4
    typed = detection.assign_threshold_examples(jax.random.key(3), labels, 4, num_runs=5)
    raw = detection.assign_threshold_examples(jax.random.PRNGKey(3), labels, 4, num_runs=5)
    chex.assert_trees_all_equal(typed, raw)  # Same key data, same sets.
    masks = np.stack([is_threshold for is_threshold, _ in typed])
    np.testing.assert_array_equal(masks.sum(axis=0), np.ones(100))  # 5 x 20 tile 100 exactly.
    other = detection.assign_threshold_examples(jax.random.key(4), labels, 4, num_runs=5)
    assert not np.array_equal(typed[0][0], other[0][0])


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0, np.zeros(10, int), 1), {}, "num_classes=1 must be an int >= 2"),
        ((0, np.zeros(3, int), 3), {}, r"N=3 examples give N // \(C \+ 1\) = 0"),
        ((0, np.arange(10) % 3, 3), {"num_runs": 6}, "num_runs must be at most 5"),
        ((0, np.arange(10) % 3, 3), {"num_runs": 0}, "num_runs=0 must be a positive int"),
        ((0, np.arange(10), 3), {}, r"labels must be in \[0, 3\)"),
        ((-1, np.arange(10) % 3, 3), {}, "seed=-1 must be a non-negative int"),
        (("seed", np.arange(10) % 3, 3), {}, "key_or_seed must be"),
    ],
)
def test_threshold_examples_rejects(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        detection.assign_threshold_examples(*args, **kwargs)


def test_margins():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0], [0.0, -1.0, 5.0]])
    labels = np.array([0, 0, 1, 2])
    expected = np.array([1.0, -3.0, 0.0, 5.0])
    np.testing.assert_allclose(detection.margins(logits, labels), expected)
    np.testing.assert_allclose(jax.jit(detection.margins)(logits, jnp.asarray(labels)), expected)
    with pytest.raises(ValueError, match=r"must be \[N, C'\]"):
        detection.margins(logits[:, :1], labels)
    with pytest.raises(ValueError, match="labels must be integers"):
        detection.margins(logits, labels.astype(float))


def test_update_aum_accumulates_repeated_indices():
    aum_sum, count = detection.init_aum(5)
    aum_sum, count = detection.update_aum(aum_sum, count, np.array([0, 1, 1]), np.array([1, 2, 3]))
    step = jax.jit(detection.update_aum)
    aum_sum, count = step(aum_sum, count, jnp.array([1, 4]), jnp.array([-1.0, 0.5]))
    aum_sum, count = step(aum_sum, count, jnp.array([4, 4]), jnp.array([1.0, 1.0]))
    np.testing.assert_allclose(aum_sum, [1.0, 4.0, 0.0, 0.0, 2.5])
    np.testing.assert_array_equal(count, [1, 3, 0, 0, 3])
    aum = detection.aum_scores(aum_sum, count)
    np.testing.assert_allclose(aum, [1.0, 4.0 / 3, np.nan, np.nan, 2.5 / 3], rtol=1e-6)
    with pytest.raises(ValueError, match=r"must both be \[B\]"):
        detection.update_aum(aum_sum, count, jnp.array([0, 1]), jnp.array([1.0]))


def test_aum_threshold():
    aum = np.concatenate([np.arange(101.0), [np.nan, -50.0, 500.0]])
    is_threshold = np.array([True] * 102 + [False, False])
    assert detection.aum_threshold(aum, is_threshold) == pytest.approx(99.0)
    assert detection.aum_threshold(aum, is_threshold, percentile=50) == pytest.approx(50.0)
    assert detection.aum_threshold(jnp.asarray(aum), jnp.asarray(is_threshold), 0) == 0.0
    with pytest.raises(ValueError, match=r"percentile=101 must be in \[0, 100\]"):
        detection.aum_threshold(aum, is_threshold, percentile=101)
    with pytest.raises(ValueError, match="No threshold example has a finite AUM"):
        detection.aum_threshold(aum, np.zeros(104, bool))
    with pytest.raises(ValueError, match="bool"):
        detection.aum_threshold(aum, is_threshold.astype(int))


def test_aum_detect_hand_made():
    aum_a = np.array([2.0, -3.0, 1.0, -1.0, -2.0])
    aum_b = np.array([4.0, 0.0, -4.0, 6.0, -6.0])
    thr_a = np.array([False, False, False, True, True])  # Threshold AUMs -1, -2.
    thr_b = np.array([True, True, False, False, False])  # Threshold AUMs 4, 0.
    is_flagged, score = detection.aum_detect(
        [aum_a, aum_b], [thr_a, thr_b], percentile=100, rule="mean"
    )
    # Thresholds: run a -1, run b 4. Scores: threshold - AUM, averaged over the runs judging.
    np.testing.assert_allclose(score, [-3.0, 2.0, (-2.0 + 8.0) / 2, -2.0, 10.0])
    np.testing.assert_array_equal(is_flagged, [False, True, True, False, True])
    # The reference rule (the default): flagged only when every run judging it flags it. Example
    # 2 is judged by both runs, flagged by b (8) but not by a (-2): the smallest score, -2.
    is_flagged, score = detection.aum_detect([aum_a, aum_b], [thr_a, thr_b], percentile=100)
    np.testing.assert_allclose(score, [-3.0, 2.0, -2.0, -2.0, 10.0])
    np.testing.assert_array_equal(is_flagged, [False, True, False, False, True])
    with pytest.raises(ValueError, match="rule='max' is not one of"):
        detection.aum_detect([aum_a], [thr_a], rule="max")
    # One run: its threshold examples are not judged.
    is_flagged, score = detection.aum_detect([aum_a], [thr_a], percentile=100)
    np.testing.assert_array_equal(is_flagged, [False, True, False, False, False])
    np.testing.assert_array_equal(np.isnan(score), thr_a)
    with pytest.raises(ValueError, match="same positive number"):
        detection.aum_detect([aum_a, aum_b], [thr_a])


def test_aum_sums_leave_out_the_first_epoch():
    # Epoch 0's margins are large (initialisation); from epoch 1 on, example 1 is mislabelled.
    sums = np.array([[9.0, 9.0, 9.0], [2.0, -4.0, 1.0], [4.0, -2.0, 1.0]])
    counts = np.array([[1, 1, 1], [1, 2, 1], [1, 2, 1]])
    total, count = detection.aum_sums_from_epoch(sums, counts, first_epoch=1)
    np.testing.assert_array_equal(total, [6.0, -6.0, 2.0])
    np.testing.assert_array_equal(count, [2, 4, 2])
    np.testing.assert_allclose(detection.aum_scores(total, count), [3.0, -1.5, 1.0])
    every, _ = detection.aum_sums_from_epoch(sums, counts)
    np.testing.assert_array_equal(every, [15.0, 3.0, 11.0])
    # A one-epoch history is counted whole rather than left empty.
    one, _ = detection.aum_sums_from_epoch(sums[:1], counts[:1], first_epoch=1)
    np.testing.assert_array_equal(one, [9.0, 9.0, 9.0])


def test_aum_end_to_end_flags_the_mislabelled():
    """Simulated training: logits favour the true class; mislabelled examples get negative AUM."""
    rng = np.random.default_rng(1)
    num_classes, n, epochs = 4, 500, 6
    true = rng.integers(0, num_classes, n)
    is_mislabelled = rng.random(n) < 0.1
    given = np.where(is_mislabelled, (true + 1) % num_classes, true)
    runs = detection.assign_threshold_examples(0, given, num_classes)
    step = jax.jit(detection.update_aum)
    aums, thresholds = [], []
    for is_threshold, threshold_labels in runs:
        aum_sum, count = detection.init_aum(n)
        for _ in range(epochs):
            logits = rng.normal(0.0, 0.3, (n, num_classes + 1))
            logits[np.arange(n), true] += 3.0  # The network learns the true class...
            clean = ~is_mislabelled & ~is_threshold
            logits[clean, given[clean]] += 1.0  # ...and clean labels a little more easily;
            logits[is_threshold, num_classes] += 1.5  # the fake class is partly memorised.
            for batch in np.array_split(rng.permutation(n), 5):
                m = detection.margins(logits[batch], threshold_labels[batch])
                aum_sum, count = step(aum_sum, count, batch, m)
        aums.append(detection.aum_scores(aum_sum, count))
        thresholds.append(is_threshold)
    is_flagged, score = detection.aum_detect(aums, thresholds)
    np.testing.assert_array_equal(is_flagged, is_mislabelled)
    assert score[is_mislabelled].min() > score[~is_mislabelled].max()


# --------------------------------------------------------------------------------------------------
# Property tests: pt and AUM detectors on random inputs (extreme logits, ties, one class).
# --------------------------------------------------------------------------------------------------

# Logits: multiples of 1/8 up to 1e4 (exact in float32, so margins are exact differences, never
# subnormal), often tied, often at +-1e4.
logit_values = st.one_of(
    st.sampled_from([-1e4, 1e4, 0.0, 1.0]), st.integers(-80_000, 80_000).map(lambda v: v / 8)
)
# Probabilities: often 0, 1 and ties.
probability_values = st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0))
open_unit = st.floats(0.0, 1.0, exclude_min=True, exclude_max=True)


@st.composite
def logits_and_labels(draw, max_n=24, max_classes=12):
    """``(logits float32 [N, C], labels [N])``; sometimes every label is the same class."""
    n, num_classes = draw(st.integers(1, max_n)), draw(st.integers(2, max_classes))
    logits = draw(hnp.arrays(np.float32, (n, num_classes), elements=logit_values))
    if draw(st.booleans()):
        labels = np.full(n, draw(st.integers(0, num_classes - 1)))
    else:
        labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, num_classes - 1)))
    return logits, labels


def softmax(logits):
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(
    p_t=hnp.arrays(np.float64, st.integers(0, 50), elements=probability_values),
    thresholds=st.lists(st.one_of(open_unit, st.just(0.5)), min_size=2, max_size=2),
)
def test_property_pt_threshold_monotone_in_threshold(p_t, thresholds):
    low, high = sorted(thresholds)
    flagged_low, score = detection.pt_threshold(p_t, low)
    flagged_high, score_high = detection.pt_threshold(p_t, high)
    chex.assert_shape([flagged_low, flagged_high, score], p_t.shape)
    assert flagged_low.dtype == flagged_high.dtype == np.bool_
    np.testing.assert_array_equal(flagged_low, p_t < low)
    assert not (flagged_low & ~flagged_high).any()  # A lower threshold flags a subset.
    assert np.all(np.isfinite(score)) and np.all((score >= 0) & (score <= 1))
    np.testing.assert_array_equal(score, 1.0 - p_t)
    np.testing.assert_array_equal(score, score_high)  # The score ignores the threshold.


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(logits_and_labels())
def test_property_predicted_neq_given_with_ties_and_saturated_softmax(case):
    logits, labels = case
    probs = softmax(logits)  # +-1e4 logits saturate to exact 0 and 1, with ties.
    flagged, score = detection.predicted_neq_given(probs, labels)
    chex.assert_shape([flagged, score], labels.shape)
    assert flagged.dtype == np.bool_ and np.all(np.isfinite(score))
    p_t = probs[np.arange(len(labels)), labels]
    np.testing.assert_array_equal(score, 1.0 - p_t)
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    best_other = others.max(axis=1)
    assert not flagged[p_t > best_other].any()  # The given label wins outright: not flagged.
    assert flagged[p_t < best_other].all()  # Another class wins outright: flagged.
    np.testing.assert_array_equal(flagged, probs.argmax(axis=1) != labels)  # Ties: first argmax.


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(logits_and_labels())
def test_property_margins_sign_and_value(case):
    logits, labels = case
    margin = np.asarray(detection.margins(logits, labels))
    chex.assert_shape(margin, labels.shape)
    assert np.all(np.isfinite(margin))
    assigned = logits[np.arange(len(labels)), labels]
    others = logits.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    np.testing.assert_array_equal(margin, assigned - others.max(axis=1))  # Exact in float32.
    is_max = assigned[:, None] >= logits
    unique_max = is_max.all(axis=1) & ((logits == assigned[:, None]).sum(axis=1) == 1)
    assert np.all(margin[unique_max] > 0) and np.all(margin[~unique_max] <= 0)
    np.testing.assert_array_equal(margin == 0, is_max.all(axis=1) & ~unique_max)  # Tied at the top.


UPDATE_AUM = jax.jit(detection.update_aum)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    num_examples=st.sampled_from([1, 5, 16]),
    batches=st.lists(
        st.integers(1, 8).flatmap(
            lambda b: st.tuples(
                hnp.arrays(np.int32, b, elements=st.integers(0, 15)),
                hnp.arrays(np.float32, b, elements=logit_values),
            )
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_property_aum_is_the_mean_of_the_margins_seen(num_examples, batches):
    """Steps of random batches (indices repeat, as with sampling with replacement)."""
    aum_sum, count = detection.init_aum(num_examples)
    seen = [[] for _ in range(num_examples)]
    for indices, batch_margins in batches:
        indices = indices % num_examples
        aum_sum, count = UPDATE_AUM(aum_sum, count, indices, batch_margins)
        for i, m in zip(indices, batch_margins, strict=True):
            seen[i].append(m)
    chex.assert_type([aum_sum, count], [jnp.float32, jnp.int32])
    np.testing.assert_array_equal(count, [len(s) for s in seen])
    aum = np.asarray(detection.aum_scores(aum_sum, count))
    chex.assert_shape(aum, (num_examples,))
    was_seen = np.array([bool(s) for s in seen])
    np.testing.assert_array_equal(np.isnan(aum), ~was_seen)  # NaN exactly for the unseen.
    # Margins on a 1/8 grid below 1e4: the float32 sums are exact, the mean one rounding.
    want = np.array([np.mean(np.float64(s)) for s in seen if s])
    np.testing.assert_allclose(aum[was_seen], want, rtol=1e-6)


@st.composite
def aum_runs(draw):
    """``R`` runs of AUMs ``[N]`` (+-1e4, ties, NaN for unseen) with threshold masks."""
    n, num_runs = draw(st.integers(1, 40)), draw(st.integers(1, 3))
    values = st.one_of(logit_values, st.just(np.nan))
    aums = [draw(hnp.arrays(np.float64, n, elements=values)) for _ in range(num_runs)]
    masks = [draw(hnp.arrays(np.bool_, n)) for _ in range(num_runs)]
    return aums, masks


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(aum_runs(), st.lists(st.floats(0.0, 100.0), min_size=2, max_size=2))
def test_property_aum_threshold_and_detect(runs, percentiles):
    aums, masks = runs
    low, high = sorted(percentiles)
    usable = [m & np.isfinite(a) for a, m in zip(aums, masks, strict=True)]
    if not all(u.any() for u in usable):  # Some run has no finite threshold AUM: refused.
        with pytest.raises(ValueError, match="No threshold example has a finite AUM"):
            detection.aum_detect(aums, masks, low)
        return
    thresholds = []
    for aum, mask, ok in zip(aums, masks, usable, strict=True):
        at_low = detection.aum_threshold(aum, mask, low)
        at_high = detection.aum_threshold(aum, mask, high)
        assert isinstance(at_low, float) and np.isfinite(at_low)
        assert aum[ok].min() <= at_low <= at_high <= aum[ok].max()
        thresholds.append(at_low)
    flagged, score = detection.aum_detect(aums, masks, low, rule="mean")
    flagged_high, _ = detection.aum_detect(aums, masks, high, rule="mean")
    chex.assert_shape([flagged, score], aums[0].shape)
    assert flagged.dtype == np.bool_
    judged = np.stack([~m & np.isfinite(a) for a, m in zip(aums, masks, strict=True)])
    np.testing.assert_array_equal(np.isnan(score), ~judged.any(axis=0))
    np.testing.assert_array_equal(flagged, np.nan_to_num(score, nan=0.0) > 0)
    assert not (flagged & ~flagged_high).any()  # A higher percentile flags a superset.
    terms = np.where(judged, np.array(thresholds)[:, None] - np.stack(aums), 0.0)
    with np.errstate(invalid="ignore"):
        want = terms.sum(axis=0) / judged.sum(axis=0)
    np.testing.assert_allclose(score, want, rtol=1e-12, atol=1e-9)
    if len(aums) == 1:
        np.testing.assert_array_equal(flagged, judged[0] & (aums[0] < thresholds[0]))
    # The reference rule: the smallest term over the judging runs; every judging run must flag.
    every, smallest = detection.aum_detect(aums, masks, low)
    terms_or_inf = np.where(judged, np.array(thresholds)[:, None] - np.stack(aums), np.inf)
    want_smallest = np.where(judged.any(axis=0), terms_or_inf.min(axis=0), np.nan)
    np.testing.assert_allclose(smallest, want_smallest, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(every, judged.any(axis=0) & (terms_or_inf > 0).all(axis=0))
    assert not (every & ~flagged).any()  # A subset of the mean rule's flags.


@st.composite
def threshold_example_problems(draw):
    num_classes = draw(st.integers(2, 12))
    n = draw(st.integers(num_classes + 1, 300))
    size = n // (num_classes + 1)
    num_runs = draw(st.integers(1, n // size))
    if draw(st.booleans()):
        labels = np.full(n, draw(st.integers(0, num_classes - 1)))  # One class present.
    else:
        labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, num_classes - 1)))
    seed = draw(st.one_of(st.integers(0, 2**63 - 1), st.integers(0, 2**31 - 1).map(jax.random.key)))
    return seed, labels, num_classes, num_runs


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(threshold_example_problems())
def test_property_threshold_examples_disjoint_and_sized(problem):
    seed, labels, num_classes, num_runs = problem
    n, size = len(labels), len(labels) // (num_classes + 1)
    runs = detection.assign_threshold_examples(seed, labels, num_classes, num_runs=num_runs)
    assert len(runs) == num_runs
    for is_threshold, threshold_labels in runs:
        chex.assert_shape([is_threshold, threshold_labels], (n,))
        assert is_threshold.dtype == np.bool_ and threshold_labels.dtype == np.int32
        assert is_threshold.sum() == size
        np.testing.assert_array_equal(threshold_labels, np.where(is_threshold, num_classes, labels))
    masks = np.stack([is_threshold for is_threshold, _ in runs])
    assert masks.sum(axis=0).max() <= 1  # Disjoint across runs.
    chex.assert_trees_all_equal(
        runs, detection.assign_threshold_examples(seed, labels, num_classes, num_runs=num_runs)
    )
    # Consecutive slices of one permutation: fewer runs take the first of the same sets.
    fewer = detection.assign_threshold_examples(seed, labels, num_classes, num_runs=1)
    np.testing.assert_array_equal(fewer[0][0], runs[0][0])
    with pytest.raises(ValueError, match=f"num_runs must be at most {n // size}"):
        detection.assign_threshold_examples(seed, labels, num_classes, num_runs=n // size + 1)


# Int s == t * 2**32 and key data [0, t] (seed 0 and jax.random.key(0), 2**32 and key(1)) once
# gave the same sets: np.random.SeedSequence pads its entropy words with zeros.
@pytest.mark.parametrize(("seed", "key_seed"), [(0, 0), (2**32, 1), (7 * 2**32, 7)])
def test_threshold_examples_int_seed_and_key_never_share_sets(seed, key_seed):
    labels = np.arange(100) % 4
    from_int = detection.assign_threshold_examples(seed, labels, 4, num_runs=5)
    from_key = detection.assign_threshold_examples(jax.random.key(key_seed), labels, 4, num_runs=5)
    assert not np.array_equal(from_int[0][0], from_key[0][0])
