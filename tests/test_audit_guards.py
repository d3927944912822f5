"""The audit's guards: each warning provoked, and silence where the fit is sound."""

import numpy as np
import pytest

from robust_losses_jax import audit_guards, config


def report(cfg=None, *, given, predicted, flagged=None, out_of_sample=False, test_accuracy=None,
           held_out=None):  # fmt: skip
    given, predicted = np.asarray(given), np.asarray(predicted)
    flagged = given != predicted if flagged is None else np.asarray(flagged)
    return audit_guards.fit_report(
        given, predicted, flagged, cfg=cfg, out_of_sample=out_of_sample,
        test_accuracy=test_accuracy, is_held_out=held_out,
    )  # fmt: skip


def labels_agreeing(share, n=100):
    given = np.arange(n) % 10
    predicted = given.copy()
    predicted[: round(n * (1 - share))] += 1
    return given, predicted % 10


def test_schedule_counts_the_delay_first():
    assert audit_guards.schedule(config.Config(loss="power", epochs=12)) == (2, 10)
    assert audit_guards.schedule(config.Config(loss="power", epochs=1)) == (1, 0)
    assert audit_guards.schedule(config.Config(loss="gce", epochs=5)) == (0, 5)
    assert audit_guards.schedule(config.Config(loss="ce", epochs=5)) == (5, 0)
    assert audit_guards.schedule(config.Config(loss="cutoff", delay_epochs=4, epochs=3)) == (3, 0)


def test_a_sound_fit_gives_no_warning():
    given, predicted = labels_agreeing(0.9)
    fit = report(config.Config(loss="gce", epochs=10), given=given, predicted=predicted,
                 test_accuracy=0.86)  # fmt: skip
    assert fit.heldout_source == "test split" and fit.given_accuracy == pytest.approx(0.9)
    assert audit_guards.audit_warnings(fit) == []


def test_a_robust_loss_that_never_engaged_is_named():
    given, predicted = labels_agreeing(0.9)
    fit = report(config.Config(loss="power", epochs=2), given=given, predicted=predicted,
                 test_accuracy=0.86)  # fmt: skip
    (line,) = audit_guards.audit_warnings(fit)
    assert line.startswith("the power loss never engaged: all 2 epochs")
    # Cross-entropy asked for is cross-entropy trained: nothing to warn of.
    fit = report(config.Config(loss="ce", epochs=2), given=given, predicted=predicted,
                 test_accuracy=0.86)  # fmt: skip
    assert audit_guards.audit_warnings(fit) == []


def test_an_underfit_model_is_named_from_out_of_fold_predictions():
    given, predicted = labels_agreeing(0.65)
    fit = report(config.Config(loss="gce", epochs=3, detector="cl"), given=given,
                 predicted=predicted, flagged=np.zeros(100, bool), out_of_sample=True)  # fmt: skip
    assert fit.heldout_accuracy == pytest.approx(0.65) and fit.heldout_source == "out-of-fold"
    (line,) = audit_guards.audit_warnings(fit)
    assert line.startswith("the model underfits: 0.650 accuracy on held-out given labels")


def test_an_implausible_flagged_share_is_named():
    given, predicted = labels_agreeing(0.55)
    fit = report(given=given, predicted=predicted, out_of_sample=True)
    lines = audit_guards.audit_warnings(fit)
    assert any(line.startswith("45.0% of the labels flagged") for line in lines)


def test_a_memorising_model_is_named():
    given, predicted = labels_agreeing(1.0)
    fit = report(config.Config(loss="ce", epochs=30), given=given, predicted=predicted,
                 test_accuracy=0.8)  # fmt: skip
    (line,) = audit_guards.audit_warnings(fit)
    assert line.startswith("the model memorised its labels: 1.000 accuracy")
    # Without held-out labels nothing can be judged of it, and nothing is claimed.
    fit = report(config.Config(loss="ce", epochs=30), given=given, predicted=predicted)
    assert fit.heldout_source == "none" and audit_guards.audit_warnings(fit) == []


def test_a_held_out_slice_is_the_held_out_accuracy_and_judges_memorising():
    given, predicted = labels_agreeing(1.0)
    predicted[:20] = (given[:20] + 1) % 10  # Wrong on every held-out example, right elsewhere.
    held_out = np.arange(100) < 25
    fit = report(config.Config(loss="ce", epochs=30), given=given, predicted=predicted,
                 test_accuracy=0.99, held_out=held_out)  # fmt: skip
    # In-sample over the 75 trained on; held out over the slice, preferred to the test split.
    assert fit.given_accuracy == 1.0 and fit.heldout_accuracy == pytest.approx(5 / 25)
    assert fit.heldout_source == "slice of the given labels"
    lines = audit_guards.audit_warnings(fit)
    assert [line.split(":")[0] for line in lines] == [
        "the model underfits",
        "the model memorised its labels",
    ]
