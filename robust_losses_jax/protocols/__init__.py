"""Detectors and their protocols: which models a run trains, and what it makes of them.

A detector is one module that registers a :class:`base.Detector` under its name
(``Config.detector``, ``--detector``); the built-in ones:

- :mod:`in_sample` (``pt``): one model on every example, its own outputs on them;
- :mod:`cross_validation` (``cl``): K fresh models, each predicting its held-out fold, then
  Confident Learning;
- :mod:`aum` (``aum``): two runs with threshold examples, margins from every step.

A user's detector registers itself the same way from a module of its own (``--plugin``,
docs/extending.md). :mod:`base` holds what they share (the registry, :class:`base.Protocol`,
training the members, the predictions' fields). :func:`protocol_for` sets up the one a config
names; :func:`validate` checks a config against it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax

from robust_losses_jax import config as config_lib
from robust_losses_jax.noisy_data import NoisyData
from robust_losses_jax.protocols import aum, cross_validation, in_sample
from robust_losses_jax.protocols.base import (
    Detector,
    Protocol,
    detector,
    register_detector,
    registered_detectors,
)

# The built-in detectors, in the order ``--help`` lists them.
for _builtin in (in_sample.DETECTOR, cross_validation.DETECTOR, aum.DETECTOR):
    register_detector(_builtin)

__all__ = [
    "Detector",
    "Protocol",
    "detector",
    "protocol_for",
    "register_detector",
    "registered_detectors",
    "validate",
]


def validate(cfg: config_lib.Config, *, num_devices: int) -> None:
    """:func:`config.validate`, then what the detector decides: that ``cfg.detector`` is
    registered and reads the settings given (``--holdout`` only where it declares it)."""
    config_lib.validate(cfg, num_devices=num_devices)
    spec = detector(cfg.detector)
    if cfg.holdout and "holdout" not in spec.settings:
        takers = [d.name for d in registered_detectors() if "holdout" in d.settings]
        raise ValueError(
            f"holdout {cfg.holdout} is for --detector={'/'.join(takers)} ({cfg.detector} "
            "holds out its own or none)."
        )


def protocol_for(
    cfg: config_lib.Config,
    data: NoisyData,
    workdir: Path,
    base_key: jax.Array,
    log: Callable[[str], None],
) -> Protocol:
    """The protocol ``cfg.detector`` names, set up for this run (``base_key``:
    ``jax.random.key(cfg.seed)``; ``workdir``: where K-fold keeps finished folds)."""
    return detector(cfg.detector).protocol(cfg, data, base_key, workdir, log)
