"""``--tau=auto``: the cutoff loss's threshold, chosen after the delay without clean labels.

At the end of the delay's last epoch each member's own (in-sample) probabilities on its
training rows give an estimated noise rate (Confident Learning's calibrated confident joint,
:func:`detection.estimated_noise_rates`), and ``tau`` is the ``p_t`` quantile at that rate
(:func:`auto_threshold`). From the next step on, the member trains with that ``tau``. Each
member's choice is saved (``auto_tau[_TAG].json``) so that a resumed run trains with the same
one. ``config.validate`` checks the setting (the cutoff loss, a delay within the epochs); the
command line spells it ``--tau=auto`` (``Config.auto_tau``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax import detection, records
from robust_losses_jax.training.stacking import Member

# What a run writes for it (a run's outputs: experiment.OUTPUT_PATTERNS).
FILE_PATTERN = "auto_tau*.json"


def auto_threshold(labels: Any, pred_probs: Any) -> tuple[float, float]:
    """``(tau, rate)`` from ``labels`` ``[N]`` and in-sample probabilities ``[N, C]``.

    ``rate`` is :func:`detection.estimated_noise_rates`' overall estimate on the model's own
    probabilities, and ``tau`` the ``rate``-quantile of ``p_t``: about that fraction of the
    examples, the least confident in their given label, falls below it.
    """
    labels, probs = np.asarray(labels), np.asarray(pred_probs)
    rate, _ = detection.estimated_noise_rates(labels, probs)
    p_t = probs[np.arange(len(labels)), labels].astype(np.float64)
    return float(np.quantile(p_t, rate)), rate


def paths(record_dirs: Sequence[Path], members: Sequence[Member]) -> list[Path]:
    """Each member's file: ``auto_tau.json``, or ``auto_tau_<tag>.json`` for a tagged one."""
    return [
        Path(d) / (f"auto_tau_{m.tag}.json" if m.tag else "auto_tau.json")
        for d, m in zip(record_dirs, members, strict=True)
    ]


def is_due(cfg: config_lib.Config, epoch: int) -> bool:
    """Whether ``tau`` is chosen at the end of 0-based ``epoch`` (the delay's last)."""
    return cfg.auto_tau and epoch + 1 == cfg.resolved_delay_epochs


def choose(
    probs: np.ndarray, members: Sequence[Member], files: Sequence[Path]
) -> list[tuple[float, float]]:
    """Each member's ``(tau, estimated noise rate)`` from its probabilities on its training rows
    (``probs``: ``[M, N, C]``, every member on every row), saved to ``files``."""
    chosen = [
        auto_threshold(member.labels[member.rows], member_probs[member.rows])
        for member, member_probs in zip(members, probs, strict=True)
    ]
    for path, (tau, rate) in zip(files, chosen, strict=True):
        records.write_json(path, {"tau": tau, "estimated_noise_rate": rate})
    return chosen


def with_tau(hparams: dict[str, jax.Array], taus: Sequence[float]) -> dict[str, jax.Array]:
    """The stack's loss hyperparameters with each member's chosen ``tau``."""
    return {**hparams, "tau": jnp.asarray(taus, jnp.float32)}


def restored(
    cfg: config_lib.Config, start_epoch: int, hparams: dict[str, jax.Array], files: Sequence[Path]
) -> dict[str, jax.Array]:
    """``hparams`` for a run resumed at ``start_epoch``: with the saved ``tau`` once it was
    chosen (the delay is over), else unchanged."""
    if not cfg.auto_tau or start_epoch < cfg.resolved_delay_epochs:
        return hparams
    return with_tau(hparams, [json.loads(Path(p).read_text())["tau"] for p in files])
