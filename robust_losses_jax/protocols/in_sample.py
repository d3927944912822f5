"""``pt``: one model on every example; its in-sample outputs (``p_t`` tracked in tested epochs).

With ``cfg.holdout`` a random slice of the examples is kept out of training: the model's
outputs on it are out-of-sample, and its accuracy on their given labels (``heldout_accuracy``)
says how well the model generalises when no clean test split exists.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax.noisy_data import NoisyData
from robust_losses_jax.protocols.base import (
    Detector,
    Log,
    Protocol,
    loss_hparams,
    predictions,
    run_keys,
    training_outputs,
)
from robust_losses_jax.split import Split
from robust_losses_jax.training.loop import Stack
from robust_losses_jax.training.stacking import Member

# ``--holdout=auto``: the fraction held out when the dataset has no test split.
HOLDOUT_WITHOUT_TEST = 0.1


def holdout_fraction(cfg: config_lib.Config, num_test: int) -> float:
    """``cfg.holdout``, or for ``auto`` (None) :data:`HOLDOUT_WITHOUT_TEST` without a test
    split (``num_test == 0``) and 0 with one."""
    if cfg.holdout is not None:
        return cfg.holdout
    return HOLDOUT_WITHOUT_TEST if num_test == 0 else 0.0


def held_out_mask(base_key: jax.Array, num_examples: int, fraction: float) -> np.ndarray:
    """``[N]`` bool: ``round(fraction * N)`` examples drawn from ``base_key`` alone."""
    order = np.asarray(jax.random.permutation(jax.random.fold_in(base_key, 5), num_examples))
    mask = np.zeros(num_examples, bool)
    mask[order[: round(fraction * num_examples)]] = True
    return mask


def in_sample_protocol(
    cfg: config_lib.Config, data: NoisyData, base_key: jax.Array, workdir: Path, log: Log
) -> Protocol:
    """One model trained on every example (but a held-out slice, ``cfg.holdout``); its outputs
    on them all are the predictions."""
    held_out = held_out_mask(base_key, len(data), holdout_fraction(cfg, len(data.test_labels)))
    member = Member(
        labels=data.given_label, rows=np.flatnonzero(~held_out), keys=run_keys(base_key, None),
        hparams=loss_hparams(cfg),
    )  # fmt: skip

    def finish(trained):
        ((fitted, position),) = trained
        out = predictions(training_outputs(fitted, position), data)
        extra = {"test_accuracy": fitted.test_accuracy[position]}
        if held_out.any():  # Out-of-sample on the slice, against its given labels.
            out["is_held_out"] = held_out
            extra["heldout_examples"] = int(held_out.sum())
            extra["heldout_accuracy"] = float(
                np.mean(out["pred"][held_out] == data.given_label[held_out])
            )
        return out, extra

    stack = Stack([member], data.num_classes, is_corrupted=data.is_corrupted[None])
    return Protocol(stack, finish)


def examples_per_model(cfg: config_lib.Config, split: Split, num_test: int) -> int:
    """Every example but the held-out slice (``num_test`` decides ``--holdout=auto``)."""
    num_examples = len(split.labels)
    return num_examples - round(holdout_fraction(cfg, num_test) * num_examples)


def predicts_another_class(predictions) -> np.ndarray:
    """``[N]`` bool: the model's most probable class is not the given label."""
    return predictions["pred"] != predictions["given_label"]


# Registered by the package (protocols/__init__.py).
DETECTOR = Detector(
    name="pt",
    description="in-sample p_t of one model; flagged where it predicts another class",
    protocol=in_sample_protocol,
    flags=predicts_another_class,
    settings=("holdout",),
    check_data=examples_per_model,
)
