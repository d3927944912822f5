"""Detection protocols: which models a run trains, and what it makes of them.

One module per protocol, named by the detector it serves (``Config.detector``):

- :mod:`in_sample` (``pt``): one model on every example, its own outputs on them;
- :mod:`cross_validation` (``cl``): K fresh models, each predicting its held-out fold, then
  Confident Learning;
- :mod:`aum` (``aum``): two runs with threshold examples, margins from every step.

:mod:`base` holds what they share (:class:`base.Protocol`, training the members, the
predictions' fields). :func:`protocol_for` sets up the one a config names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax

from robust_losses_jax import config as config_lib
from robust_losses_jax.noisy_data import NoisyData
from robust_losses_jax.protocols.aum import area_under_margin_protocol
from robust_losses_jax.protocols.base import Protocol
from robust_losses_jax.protocols.cross_validation import cross_validated_protocol
from robust_losses_jax.protocols.in_sample import in_sample_protocol


def protocol_for(
    cfg: config_lib.Config,
    data: NoisyData,
    workdir: Path,
    base_key: jax.Array,
    log: Callable[[str], None],
) -> Protocol:
    """The protocol ``cfg.detector`` names, set up for this run (``base_key``:
    ``jax.random.key(cfg.seed)``; ``workdir``: where K-fold keeps finished folds)."""
    if cfg.detector == "cl":
        return cross_validated_protocol(cfg, data, workdir, base_key, log)
    if cfg.detector == "aum":
        return area_under_margin_protocol(cfg, data, base_key)
    return in_sample_protocol(cfg, data, base_key)
