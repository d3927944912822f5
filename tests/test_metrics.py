"""Tests for robust_losses_jax.metrics: hand-built cases, degenerate cases, sklearn, errors."""

from __future__ import annotations

import math
import warnings

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from robust_losses_jax import metrics


def sklearn_detection(truth, flagged):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Degenerate cases warn; the values are what we compare.
        return {
            "precision": skm.precision_score(truth, flagged, zero_division=0),
            "recall": skm.recall_score(truth, flagged, zero_division=0),
            "f1": skm.f1_score(truth, flagged, zero_division=0),
            "balanced_accuracy": skm.balanced_accuracy_score(truth, flagged),
        }


def sklearn_ranking(truth, score):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = 0 < truth.sum() < truth.size
        return {
            "auroc": skm.roc_auc_score(truth, score) if both else math.nan,
            "average_precision": skm.average_precision_score(truth, score),
        }


def assert_matches_sklearn(truth, flagged, score):
    got = metrics.detection_metrics(truth, flagged)
    for name, want in sklearn_detection(truth, flagged).items():
        assert math.isclose(got[name], want, rel_tol=1e-12, abs_tol=1e-12), (name, got, want)
    ranking = metrics.ranking_metrics(truth, score)
    for name, want in sklearn_ranking(truth, score).items():
        if math.isnan(want):
            assert math.isnan(ranking[name]), name
        else:
            assert math.isclose(ranking[name], want, rel_tol=1e-12, abs_tol=1e-12), (name, want)


# --------------------------------------------------------------------------------------------------
# Hand-built cases with known answers.
# --------------------------------------------------------------------------------------------------


def test_detection_hand_built():
    truth = np.array([True, True, True, False, False, False, False, False])
    flagged = np.array([True, True, False, True, False, False, False, False])
    got = metrics.detection_metrics(truth, flagged)
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (2, 1, 1, 4)
    assert (got["num_flagged"], got["num_corrupted"]) == (3, 3)
    assert got["precision"] == pytest.approx(2 / 3)
    assert got["recall"] == pytest.approx(2 / 3)
    assert got["f1"] == pytest.approx(2 / 3)
    assert got["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert all(isinstance(got[k], int) for k in ("tp", "fp", "fn", "tn", "num_flagged"))
    assert all(isinstance(got[k], float) for k in ("precision", "recall", "f1"))


def test_ranking_hand_built():
    truth = np.array([True, True, False, False])
    # Corrupted scores 0.9, 0.4; clean 0.6, 0.1: 3 of the 4 (corrupted, clean) pairs are ordered.
    assert metrics.auroc(truth, [0.9, 0.4, 0.6, 0.1]) == 0.75
    # Ranking T F T: precisions 1 and 2/3 at recalls 1/2 and 1.
    assert metrics.average_precision([True, False, True], [3.0, 2.0, 1.0]) == pytest.approx(5 / 6)
    assert metrics.auroc(truth, [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert metrics.average_precision(truth, [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert metrics.auroc(truth, [0.1, 0.2, 0.8, 0.9]) == 0.0


def test_ties():
    # A tie between a corrupted and a clean example counts one half.
    assert metrics.auroc([True, False], [1.0, 1.0]) == 0.5
    assert metrics.auroc([True, False, False], [2.0, 2.0, 1.0]) == 0.75
    # Tied scores are one threshold: flagging both gives precision 1/2 at recall 1.
    assert metrics.average_precision([True, False], [1.0, 1.0]) == 0.5
    assert metrics.average_precision([False, True], [1.0, 1.0]) == 0.5
    # precision_at_k: among tied scores the lower index comes first.
    truth = [False, True, True, False]
    score = [1.0, 1.0, 0.0, 0.0]
    assert metrics.precision_at_k(truth, score, k=1) == 0.0
    assert metrics.precision_at_k(truth, score, k=2) == 0.5
    assert metrics.precision_at_k(truth, score) == 0.5  # k = 2 corrupted examples.
    assert metrics.precision_at_k(truth, score, k=3) == pytest.approx(2 / 3)
    assert metrics.precision_at_k([True, False], [-0.0, 0.0], k=1) == 1.0  # -0.0 == 0.0: a tie.


def test_infinite_scores_rank_at_the_ends():
    truth = np.array([True, False, True, False])
    score = np.array([np.inf, -np.inf, np.inf, 0.0])
    assert metrics.auroc(truth, score) == 1.0
    assert metrics.average_precision(truth, score) == 1.0
    assert metrics.precision_at_k(truth, score) == 1.0


def test_ranking_metrics_dict_and_jax_inputs():
    truth = np.array([True, False, True, False, False])
    score = np.array([0.8, 0.7, 0.3, 0.1, 0.5])
    got = metrics.ranking_metrics(jnp.asarray(truth), jnp.asarray(score, jnp.float32))
    assert set(got) == {"auroc", "average_precision", "precision_at_k"}
    assert got["auroc"] == pytest.approx(4 / 6)
    assert got["average_precision"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 4)
    assert got["precision_at_k"] == 0.5
    assert metrics.detection_metrics(jnp.asarray(truth), jnp.asarray(score > 0.6))["tp"] == 1


# --------------------------------------------------------------------------------------------------
# Degenerate cases.
# --------------------------------------------------------------------------------------------------

T, F = True, False
DEGENERATE_DETECTION = [
    # truth, flagged, precision, recall, f1, balanced accuracy
    ([T, T, F], [F, F, F], 0.0, 0.0, 0.0, 0.5),  # Nothing flagged.
    ([F, F, F], [T, F, F], 0.0, 0.0, 0.0, 2 / 3),  # Nothing corrupted: BA is the TNR.
    ([F, F, F], [F, F, F], 0.0, 0.0, 0.0, 1.0),  # Neither.
    ([T, T, T], [T, F, T], 1.0, 2 / 3, 0.8, 2 / 3),  # Everything corrupted: BA is the TPR.
    ([T, T], [T, T], 1.0, 1.0, 1.0, 1.0),
    ([T, F], [F, T], 0.0, 0.0, 0.0, 0.0),  # precision + recall = 0 with both sets non-empty.
]


@pytest.mark.parametrize("truth,flagged,precision,recall,f1,balanced", DEGENERATE_DETECTION)
def test_degenerate_detection(truth, flagged, precision, recall, f1, balanced):
    got = metrics.detection_metrics(np.array(truth), np.array(flagged))
    want = {"precision": precision, "recall": recall, "f1": f1, "balanced_accuracy": balanced}
    assert {k: got[k] for k in want} == pytest.approx(want)
    assert_matches_sklearn(np.array(truth), np.array(flagged), np.arange(len(truth), dtype=float))


def test_degenerate_ranking():
    score = [0.3, 0.2, 0.1]
    assert math.isnan(metrics.auroc([F, F, F], score))
    assert math.isnan(metrics.auroc([T, T, T], score))
    assert metrics.average_precision([F, F, F], score) == 0.0
    assert metrics.average_precision([T, T, T], score) == 1.0
    assert metrics.precision_at_k([F, F, F], score) == 0.0  # Default k = 0.
    assert metrics.precision_at_k([T, F, F], score, k=0) == 0.0
    assert metrics.precision_at_k([T, F, F], score, k=3) == pytest.approx(1 / 3)  # The base rate.
    assert metrics.precision_at_k([T], [0.0]) == 1.0


# --------------------------------------------------------------------------------------------------
# Against scikit-learn: random cases with many ties.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_random_cases_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    truth = rng.random(n) < rng.choice([0.0, 0.05, 0.3, 0.5, 0.9, 1.0])
    # Scores correlated with the truth, rounded to few values so there are many ties.
    score = np.round(truth * rng.random() + rng.random(n), int(rng.integers(0, 3)))
    flagged = score > np.quantile(score, rng.random())
    assert_matches_sklearn(truth, flagged, score)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    hnp.arrays(np.bool_, st.integers(1, 40)).flatmap(
        lambda truth: st.tuples(
            st.just(truth),
            hnp.arrays(np.bool_, truth.shape),
            hnp.arrays(np.float64, truth.shape, elements=st.sampled_from([-1.0, 0.0, 0.5, 2.0])),
        )
    )
)
def test_property_matches_sklearn(case):
    assert_matches_sklearn(*case)


def test_precision_at_k_matches_a_direct_count():
    rng = np.random.default_rng(0)
    truth = rng.random(500) < 0.2
    score = np.round(rng.random(500), 1)
    order = sorted(range(500), key=lambda i: (-score[i], i))  # Stable descending.
    for k in (1, 10, int(truth.sum()), 499, 500):
        assert metrics.precision_at_k(truth, score, k=k) == pytest.approx(truth[order[:k]].mean())


# --------------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------------

TRUTH = np.array([True, False, True])
SCORE = np.array([0.1, 0.2, 0.3])

BAD_ARGUMENTS = [
    (lambda: metrics.detection_metrics(TRUTH, np.array([True, False])),
     r"is_flagged must have the shape of is_corrupted, \[3\]; got \[2\]"),
    (lambda: metrics.detection_metrics(np.array([1, 0, 1]), TRUTH),
     r"is_corrupted must be a boolean array, got dtype int"),
    (lambda: metrics.detection_metrics(TRUTH, np.array([1.0, 0.0, 1.0])),
     r"is_flagged must be a boolean array, got dtype float64"),
    (lambda: metrics.detection_metrics(np.zeros(0, bool), np.zeros(0, bool)),
     r"is_corrupted must have shape \[N\] with N >= 1, got \[0\]"),
    (lambda: metrics.detection_metrics(np.ones((2, 2), bool), np.ones((2, 2), bool)),
     r"is_corrupted must have shape \[N\] with N >= 1, got \[2, 2\]"),
    (lambda: metrics.auroc(TRUTH, np.array([0.1, np.nan, 0.3])),
     r"score has 1 NaN value\(s\), the first at index 1"),
    (lambda: metrics.average_precision(TRUTH, np.array([np.nan, np.nan, 0.3])),
     r"score has 2 NaN value\(s\), the first at index 0"),
    (lambda: metrics.precision_at_k(TRUTH, [0.1, 0.2]),
     r"score must have the shape of is_corrupted, \[3\]; got \[2\]"),
    (lambda: metrics.ranking_metrics(TRUTH, ["a", "b", "c"]), r"score must be numeric"),
    (lambda: metrics.auroc(np.array([0, 1, 1]), SCORE), r"is_corrupted must be a boolean array"),
    (lambda: metrics.precision_at_k(TRUTH, SCORE, k=4), r"k=4 must be an integer in \[0, N=3\]"),
    (lambda: metrics.precision_at_k(TRUTH, SCORE, k=-1), r"k=-1 must be an integer in \[0, N=3\]"),
    (lambda: metrics.precision_at_k(TRUTH, SCORE, k=1.0), r"k=1.0 must be an integer"),
    (lambda: metrics.precision_at_k(TRUTH, SCORE, k=True), r"k=True must be an integer"),
]  # fmt: skip


@pytest.mark.parametrize("call,message", BAD_ARGUMENTS)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
