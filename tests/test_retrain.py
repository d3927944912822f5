"""retrain: cleaning an audit's labels (drop, relabel) and the retrain's settings."""

import dataclasses

import chex
import numpy as np
import pytest

from robust_losses_jax import audit, config, retrain


def issues_of(given, probs, flagged):
    return audit.rank_label_issues(np.array(given), np.array(probs), is_label_issue=flagged)


PROBS = [[0.95, 0.05], [0.6, 0.4], [0.2, 0.8], [0.02, 0.98]]
GIVEN = [1, 1, 1, 1]  # The first two disputed: one confidently (0.95), one not (0.6).
FLAGGED = np.array([True, True, False, False])


def test_drop_removes_every_flagged_example():
    cleaned = retrain.clean_labels(issues_of(GIVEN, PROBS, FLAGGED), "drop")
    chex.assert_trees_all_equal(
        (cleaned.keep, cleaned.labels, cleaned.relabelled),
        (np.array([False, False, True, True]), np.array([1, 1, 1, 1], np.int32),
         np.zeros(4, bool)),
    )  # fmt: skip
    assert cleaned.removed == 2


def test_relabel_takes_the_confident_suggestions_and_drops_the_rest():
    cleaned = retrain.clean_labels(issues_of(GIVEN, PROBS, FLAGGED), "relabel")
    np.testing.assert_array_equal(cleaned.keep, [True, False, True, True])
    np.testing.assert_array_equal(cleaned.labels, [0, 1, 1, 1])
    np.testing.assert_array_equal(cleaned.relabelled, [True, False, False, False])
    assert cleaned.removed == 1


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match=r"Unknown retrain mode 'fix'; choose from drop, relabel"):
        retrain.clean_labels(issues_of(GIVEN, PROBS, FLAGGED), "fix")


def test_retrain_config_is_one_fresh_model_on_labels_as_given():
    audit_cfg = audit.audit_config(dataset="arrays", noise_rate=0.2, holdout=0.1, epochs=7)
    cfg = retrain.retrain_config(audit_cfg, "ce")
    assert (cfg.loss, cfg.loss_hparams, cfg.noise_rate, cfg.holdout, cfg.detector) == (
        "ce",
        {},
        0.0,
        0.0,
        "pt",
    )
    assert cfg.epochs == 7 and cfg.seed == audit_cfg.seed and cfg.model == audit_cfg.model
    same = retrain.retrain_config(dataclasses.replace(audit_cfg, loss_hparams={"q": 0.5}), "gce")
    assert same.loss_hparams == {"q": 0.5}
    config.validate(cfg, num_devices=1)
