"""probe: the MLP probe on features, trained with the project's losses."""

import dataclasses

import chex
import jax
import numpy as np
import pytest

from robust_losses_jax import audit, probe
from robust_losses_jax.training.loop import NonFiniteError


def blobs(n=300, dim=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(scale=4.0, size=(classes, dim))
    return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def test_same_seed_same_parameters_and_it_learns_separable_classes():
    features, labels = blobs()
    cfg = audit.audit_config(dataset="features", **{**audit.FEATURE_AUDIT_DEFAULTS, "epochs": 5})
    first = probe.train_probe(cfg, features, labels, 3)
    chex.assert_trees_all_equal(first, probe.train_probe(cfg, features, labels, 3))
    logits = probe.probe_logits(cfg, first, features, 3)
    assert logits.shape == (300, 3) and np.mean(logits.argmax(1) == labels) > 0.95
    other = probe.train_probe(dataclasses.replace(cfg, seed=1), features, labels, 3)
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, first, other)))


def test_a_non_finite_loss_stops_training():
    features, labels = blobs()
    features[0, 0] = np.inf
    cfg = audit.audit_config(dataset="features", **{**audit.FEATURE_AUDIT_DEFAULTS, "epochs": 2})
    with pytest.raises(NonFiniteError, match="epoch 1"):
        probe.train_probe(cfg, features, labels, 3)


def test_only_the_mlp_probe_is_offered():
    cfg = audit.audit_config(dataset="features", model="small_cnn")
    with pytest.raises(ValueError, match=r"--model=small_cnn: features train a probe; choose"):
        probe.probe_for(cfg, 3)


def test_feature_audit_flags_the_flipped_and_holds_a_slice_out_without_a_test_split():
    features, labels = blobs(n=600)
    given = labels.copy()
    flipped = np.arange(0, 600, 20)  # 30 labels moved to the next class.
    given[flipped] = (given[flipped] + 1) % 3
    result = audit.find_feature_issues(features, given, class_names=("a", "b", "c"))
    issues = result.issues
    assert result.test_accuracy is None and int(issues.is_held_out.sum()) == 60
    flagged = set(np.flatnonzero(issues.is_label_issue).tolist())
    assert set(flipped.tolist()) <= flagged and len(flagged) <= 33
    with_test = audit.find_feature_issues(features, given, class_names=("a", "b", "c"),
                                          test_features=features, test_labels=labels)  # fmt: skip
    assert with_test.issues.is_held_out is None and with_test.test_accuracy > 0.95
