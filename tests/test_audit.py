"""audit: ranking and flagging against cleanlab on real probabilities, the CSV, and the whole
K-fold audit on planted errors."""

import csv
import dataclasses
import io
import json
from pathlib import Path

import chex
import numpy as np
import pytest
from cleanlab.count import compute_confident_joint
from cleanlab.filter import find_label_issues as cleanlab_find_label_issues
from cleanlab.rank import get_label_quality_scores

from robust_losses_jax import audit, input_pipeline

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "label_errors" / "mnist"
needs_mnist = pytest.mark.skipif(
    not MNIST.exists(), reason="../shared/data not beside the checkout"
)


def _mnist():
    return np.load(MNIST / "given_labels.npy").astype(np.int64), np.load(MNIST / "pred_probs.npy")


@needs_mnist
@pytest.mark.parametrize("filter_by", ["prune_by_noise_rate", "both", "predicted_neq_given"])
def test_same_flags_scores_and_order_as_cleanlab_on_real_probabilities(filter_by):
    labels, probs = _mnist()
    issues = audit.rank_label_issues(labels, probs, filter_by=filter_by)
    want = cleanlab_find_label_issues(labels, probs, filter_by=filter_by)
    np.testing.assert_array_equal(issues.is_label_issue, want)
    np.testing.assert_array_equal(
        issues.label_score, get_label_quality_scores(labels, probs, method="self_confidence")
    )
    ranked = cleanlab_find_label_issues(
        labels, probs, filter_by=filter_by, return_indices_ranked_by="self_confidence"
    )
    np.testing.assert_array_equal(issues.ranking[issues.is_label_issue[issues.ranking]], ranked)
    joint = compute_confident_joint(labels, probs)
    assert issues.estimated_noise_rate == pytest.approx(1 - np.trace(joint) / joint.sum())
    np.testing.assert_allclose(
        issues.noise_rate_per_class, 1 - np.diag(joint) / joint.sum(axis=1), rtol=1e-12
    )


@needs_mnist
def test_human_verified_errors_rank_near_the_top():
    """The 15 label errors that reviewers confirmed in the MNIST test set: all among the
    argmax != given flags (87), as cleanlab finds; most of them in the top 100 of the ranking."""
    labels, probs = _mnist()
    reviewed = json.loads((MNIST / "mturk.json").read_text())
    confirmed = {c["id"] for c in reviewed if c["mturk"]["given"] < 3}
    assert len(confirmed) == 15
    issues = audit.rank_label_issues(labels, probs, filter_by="predicted_neq_given")
    assert issues.num_label_issues == 87
    assert confirmed <= set(np.flatnonzero(issues.is_label_issue))
    assert len(confirmed & set(issues.top(100).tolist())) >= 13


def test_ties_of_label_score_are_broken_by_the_margin():
    # Rows 0-2 give the label probability 0 (p_t saturated); their logit margins still differ.
    probs = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.3, 0.7], [0.9, 0.1]], np.float32)
    labels = np.zeros(5, np.int64)
    margin = np.array([-120.0, -300.0, -200.0, -0.8, 2.2])
    issues = audit.rank_label_issues(labels, probs, margin=margin)
    np.testing.assert_array_equal(issues.ranking, [1, 2, 0, 3, 4])
    # Without logits, the margin comes from the probabilities: -inf where p_t is 0.
    from_probs = audit.rank_label_issues(labels, probs)
    assert np.isneginf(from_probs.margin[:3]).all()
    np.testing.assert_allclose(from_probs.margin[3], np.log(0.3 / 0.7), rtol=1e-6)


def test_csv_has_one_row_per_example_most_suspect_first():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=40)
    labels = rng.integers(0, 3, 40)
    issues = audit.rank_label_issues(labels, probs, class_names=["ant", "bee", "cat"])
    rows = list(csv.DictReader(io.StringIO(audit.issues_csv(issues))))
    assert tuple(rows[0]) == audit.CSV_COLUMNS
    assert [int(r["index"]) for r in rows] == issues.ranking.tolist()
    assert sorted(int(r["index"]) for r in rows) == list(range(40))
    quality = [float(r["label_score"]) for r in rows]
    assert quality == sorted(quality) and quality[0] >= 0 and quality[-1] <= 1
    for r in rows:
        i = int(r["index"])
        assert int(r["given_label"]) == labels[i]
        assert int(r["predicted_label"]) == probs[i].argmax()
        assert r["given_name"] == ["ant", "bee", "cat"][labels[i]]
        assert r["is_label_issue"] == str(bool(issues.is_label_issue[i]))
        assert "path" not in r  # Arrays have no files.


def test_the_dataframe_has_cleanlabs_columns_and_loads_back_from_the_csv():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=30)
    labels = rng.integers(0, 4, 30)
    paths = tuple(f"c{labels[i]}/{i}.png" for i in range(30))
    issues = dataclasses.replace(audit.rank_label_issues(labels, probs), paths=paths)
    frame = issues.to_dataframe()
    assert list(frame.columns[:4]) == ["is_label_issue", "label_score", "given_label",
                                       "predicted_label"]  # fmt: skip
    assert frame["is_label_issue"].dtype == bool and list(frame.columns)[-1] == "path"
    assert frame.index.tolist() == issues.ranking.tolist()
    in_order = frame.sort_index()
    np.testing.assert_allclose(in_order["label_score"], probs[np.arange(30), labels])
    assert in_order["path"].tolist() == list(paths)
    read = pd.read_csv(io.StringIO(audit.issues_csv(issues)))
    assert read["is_label_issue"].dtype == bool
    assert read["is_label_issue"].tolist() == frame["is_label_issue"].tolist()
    assert read["path"].tolist() == frame["path"].tolist()
    np.testing.assert_allclose(read["label_score"], frame["label_score"], rtol=1e-5)


def test_bad_probabilities_are_one_line_errors():
    with pytest.raises(ValueError, match=r"row 1 sums to"):
        audit.rank_label_issues([0, 1], [[0.5, 0.5], [0.9, 0.3]])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        audit.rank_label_issues([0, 2], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match=r"3 class names for 2 classes"):
        audit.rank_label_issues([0, 1], [[0.5, 0.5], [0.5, 0.5]], class_names=["a", "b", "c"])


def _digits_with_planted_errors(num_flipped: int = 75):
    split = input_pipeline.load_split("sklearn_digits", "train")
    labels = split.labels.copy()
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(labels), num_flipped, replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, 10, num_flipped)) % 10
    return split, labels, flipped


@pytest.mark.slow
def test_find_label_issues_finds_planted_errors_end_to_end():
    """1,500 digits, 75 labels flipped: the K-fold audit (5 fresh MLPs, stacked) finds them."""
    split, labels, flipped = _digits_with_planted_errors()
    cfg = audit.audit_config(dataset="digits", model="mlp", epochs=10, batch_size=64,
                             eval_batch_size=256)  # fmt: skip
    issues = audit.find_label_issues(split.images, labels, config=cfg,
                                     class_names=split.class_names)  # fmt: skip
    chex.assert_shape(issues.pred_probs, (1500, 10))
    chex.assert_trees_all_close(issues.pred_probs.sum(axis=1), np.ones(1500), atol=1e-5)
    truth = np.zeros(1500, bool)
    truth[flipped] = True
    precision = truth[issues.is_label_issue].mean()
    recall = issues.is_label_issue[truth].mean()
    assert precision > 0.8 and recall > 0.8, (precision, recall)
    assert truth[issues.top(75)].sum() >= 65
    assert 0.03 < issues.estimated_noise_rate < 0.08  # 5% planted.


def test_in_sample_audit_flags_where_its_model_predicts_another_class():
    """``detector="pt"``: one model with a robust loss; its flags are the in-sample protocol's
    own (the prediction differs from the given label), not Confident Learning's."""
    split, labels, flipped = _digits_with_planted_errors()
    cfg = audit.audit_config(dataset="digits", model="mlp", epochs=10, batch_size=64,
                             eval_batch_size=256, detector="pt", loss="gce",
                             loss_hparams={})  # fmt: skip
    issues = audit.find_label_issues(split.images, labels, config=cfg)
    np.testing.assert_array_equal(issues.is_label_issue,
                                  issues.predicted_label != issues.given_label)  # fmt: skip
    truth = np.zeros(len(labels), bool)
    truth[flipped] = True
    assert issues.is_label_issue[truth].mean() > 0.8  # Recall of the planted errors.
    assert truth[issues.top(75)].sum() >= 60


def test_find_label_issues_refuses_bad_arrays():
    images = np.zeros((12, 4, 4), np.uint8)
    with pytest.raises(ValueError, match=r"labels must be integers"):
        audit.find_label_issues(images, np.zeros(12))
    with pytest.raises(ValueError, match=r"12 images but labels of shape \[11\]"):
        audit.find_label_issues(images, np.arange(11) % 2)
    # No test split: a tenth is held out (--holdout=auto), so the model trains on 11 of the 12.
    with pytest.raises(ValueError, match=r"--batch-size 128 exceeds the 11 examples each model"):
        audit.find_label_issues(images, np.arange(12) % 2)
    kfold = audit.audit_config(detector="cl", batch_size=4)
    with pytest.raises(ValueError, match=r"class '1' has 2 example\(s\), fewer than the 5 folds"):
        audit.find_label_issues(images, np.r_[np.zeros(10, int), 1, 1], config=kfold)
