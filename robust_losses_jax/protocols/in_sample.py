"""``pt``: one model on every example; its in-sample outputs (``p_t`` tracked in tested epochs)."""

from __future__ import annotations

import jax
import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax.noisy_data import NoisyData
from robust_losses_jax.protocols.base import (
    Protocol,
    loss_hparams,
    predictions,
    run_keys,
    training_outputs,
)
from robust_losses_jax.training.stacking import Member


def in_sample_protocol(cfg: config_lib.Config, data: NoisyData, base_key: jax.Array) -> Protocol:
    """One model trained on every example; its outputs on them are the predictions."""
    member = Member(
        labels=data.given_label, rows=np.arange(len(data)), keys=run_keys(base_key, None),
        hparams=loss_hparams(cfg),
    )  # fmt: skip

    def finish(trained):
        ((fitted, position),) = trained
        out = predictions(training_outputs(fitted, position), data)
        return out, {"test_accuracy": fitted.test_accuracy[position]}

    kwargs = {"num_classes": data.num_classes, "is_corrupted": data.is_corrupted[None]}
    return Protocol([member], kwargs, finish, stack_tag="")
