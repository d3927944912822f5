"""Whether an audit's flags can be trusted, judged without clean labels.

An audit flags the examples whose label its model disputes, so its flags mean little when the
model did not learn the classes (underfit), learned the wrong labels too (memorised), or never
trained with the robust loss it was asked for. :func:`fit_report` measures what can be measured
from the given labels alone; :func:`audit_warnings` turns it into one-line warnings, each
starting ``warning:`` when printed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax import losses

# Below this held-out accuracy on the given labels, many flags are the model's own mistakes.
UNDERFIT_ACCURACY = 0.7
# A flagged share above this is more likely a wrong model than that many wrong labels.
PLAUSIBLE_FLAGGED_SHARE = 0.4
# In-sample accuracy on the given labels this far above the held-out: the model learned the
# labels themselves, wrong ones included, and no longer disputes them.
MEMORISED_GAP = 0.15


@dataclasses.dataclass(frozen=True)
class FitReport:
    """How well an audit's model fits the given labels, and the schedule it trained with.

    Attributes:
      examples: audited examples.
      flagged_share: the fraction flagged.
      given_accuracy: agreement of the model's predictions with the given labels on the audited
        examples it trained on: in-sample for one model (``pt``, ``aum``), out-of-fold for
        ``cl`` and for ``--pred-probs``.
      heldout_accuracy: accuracy on given labels the model never trained on (the out-of-fold
        predictions, the held-out slice of ``--holdout``, or the test split), None where there
        are none.
      heldout_source: where ``heldout_accuracy`` comes from: ``"out-of-fold"``, ``"slice of
        the given labels"``, ``"test split"`` or ``"none"``.
      loss: the training loss's canonical name (None: probabilities given, nothing trained).
      ce_epochs: epochs of cross-entropy that ran before the robust loss (all of them for CE).
      robust_epochs: epochs that ran with the robust loss.
    """

    examples: int
    flagged_share: float
    given_accuracy: float
    heldout_accuracy: float | None
    heldout_source: str
    loss: str | None = None
    ce_epochs: int = 0
    robust_epochs: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def schedule(cfg: config_lib.Config) -> tuple[int, int]:
    """``(ce_epochs, robust_epochs)`` that ``cfg`` trains for: the delay runs first."""
    if losses.canonical_name(cfg.loss) == losses.canonical_name("ce"):
        return cfg.epochs, 0
    ce_epochs = min(cfg.resolved_delay_epochs, cfg.epochs)
    return ce_epochs, cfg.epochs - ce_epochs


def fit_report(
    given_label: np.ndarray,
    predicted_label: np.ndarray,
    is_label_issue: np.ndarray,
    *,
    cfg: config_lib.Config | None,
    out_of_sample: bool,
    test_accuracy: float | None = None,
    is_held_out: np.ndarray | None = None,
) -> FitReport:
    """The :class:`FitReport` of an audit.

    Args:
      given_label, predicted_label, is_label_issue: ``[N]`` each, as in ``audit.LabelIssues``.
      cfg: the audit's config; None when the probabilities were given (nothing trained).
      out_of_sample: whether the predictions are out-of-sample (K folds, or given probabilities).
      test_accuracy: accuracy on the test split's labels, where there is one.
      is_held_out: ``[N]`` bool, the examples one model did not train on (``--holdout``); their
        accuracy is the held-out one (preferred to the test split's: the same labels' kind).
    """
    held = np.zeros(len(given_label), bool) if is_held_out is None else np.asarray(is_held_out)
    correct = given_label == predicted_label
    agree = float(np.mean(correct[~held])) if (~held).any() else 0.0
    if out_of_sample:
        heldout, source = agree, "out-of-fold"
    elif held.any():
        heldout, source = float(np.mean(correct[held])), "slice of the given labels"
    elif test_accuracy is not None:
        heldout, source = float(test_accuracy), "test split"
    else:
        heldout, source = None, "none"
    ce_epochs, robust_epochs = (0, 0) if cfg is None else schedule(cfg)
    return FitReport(
        examples=len(given_label),
        flagged_share=float(np.mean(is_label_issue)) if len(given_label) else 0.0,
        given_accuracy=agree,
        heldout_accuracy=heldout,
        heldout_source=source,
        loss=None if cfg is None else losses.canonical_name(cfg.loss),
        ce_epochs=ce_epochs,
        robust_epochs=robust_epochs,
    )


def audit_warnings(fit: FitReport) -> list[str]:
    """One line per reason not to trust the flags as they stand (no ``warning:`` prefix)."""
    found = []
    robust = fit.loss is not None and fit.loss != losses.canonical_name("ce")
    if robust and fit.robust_epochs == 0:
        found.append(
            f"the {fit.loss} loss never engaged: all {fit.ce_epochs} epochs ran the cross-entropy "
            "delay (--delay); these are cross-entropy's flags. Train longer or lower --delay."
        )
    if fit.heldout_accuracy is not None and fit.heldout_accuracy < UNDERFIT_ACCURACY:
        found.append(
            f"the model underfits: {fit.heldout_accuracy:.3f} accuracy on held-out given labels "
            f"({fit.heldout_source}), below {UNDERFIT_ACCURACY}; many flags may be its own "
            "mistakes. Train longer (--epochs) or use a larger --model."
        )
    if fit.flagged_share > PLAUSIBLE_FLAGGED_SHARE:
        found.append(
            f"{fit.flagged_share:.1%} of the labels flagged, more than "
            f"{PLAUSIBLE_FLAGGED_SHARE:.0%}: more likely a model that has not learned the classes "
            "than that many wrong labels."
        )
    one_model = fit.heldout_source in ("slice of the given labels", "test split")
    gap = fit.given_accuracy - fit.heldout_accuracy if one_model else None
    if gap is not None and gap > MEMORISED_GAP:
        found.append(
            f"the model memorised its labels: {fit.given_accuracy:.3f} accuracy on the given "
            f"labels it trained on against {fit.heldout_accuracy:.3f} held out (a gap over "
            f"{MEMORISED_GAP}); it no longer disputes wrong labels it learned. Train fewer "
            "epochs or use a robust --loss."
        )
    return found
