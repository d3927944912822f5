"""What every detection protocol shares: its set-up object, training its models, their outputs.

A :class:`Protocol` is the list of models (stack members) a run still needs, the arguments
:func:`training.loop.fit` needs for them, and a ``finish`` function that turns the trained stack
into the run's predictions and extra scores. The protocols themselves are the modules beside
this one (:mod:`in_sample`, :mod:`cross_validation`, :mod:`aum`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax.noisy_data import NoisyData
from robust_losses_jax.training.engines import uses_device_data
from robust_losses_jax.training.loop import Fitted, member_steps_per_epoch
from robust_losses_jax.training.stacking import Member

# Per-example outputs a held-out (out-of-sample) evaluation keeps.
OUT_OF_SAMPLE = ("logits", "probs", "p_t", "margin", "pred", "weight")

Trained = list[tuple[Fitted, int]]  # Per member: the Fitted stack holding it, its position.


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A run's detection protocol, set up: the models it still needs and what it makes of them.

    Attributes:
      members: the models to train (fewer than the protocol's when an interrupted run saved
        some: a finished fold is not trained again).
      fit_kwargs: what :func:`training.loop.fit` needs besides (``num_classes``,
        ``is_corrupted``, ``aum_from_epoch``).
      finish: ``trained -> (predictions, extra)``, given per member the :class:`Fitted` stack
        that holds it and its position there (:func:`fit_members`' result). The stack may hold
        other runs' models too (a sweep trains several runs' models together).
      stack_tag: the name of the members' stack when the run trains them alone.
    """

    members: list[Member]
    fit_kwargs: dict[str, Any]
    finish: Callable[[Trained], tuple[dict, dict]]
    stack_tag: str


def run_keys(base_key: jax.Array, run: int | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(init, step, order)`` keys of a model of the run; ``None`` is the single in-sample
    model, an int one of several (a fold, an AUM run)."""
    keys = tuple(jax.random.fold_in(base_key, i) for i in (1, 2, 3))
    if run is None:
        return keys
    return tuple(jax.random.fold_in(k, 1000 + run) for k in keys)


def loss_hparams(cfg: config_lib.Config) -> dict[str, float]:
    """The run's loss hyperparameters, as floats (a stack member's)."""
    return {k: float(v) for k, v in cfg.to_json()["loss_hparams"].items()}


def fit_members(
    cfg: config_lib.Config,
    fit_run: Callable[..., Fitted],
    images: np.ndarray,
    members: list[Member],
    *,
    stack_tag: str,
    log: Callable[[str], None],
    **kwargs: Any,
) -> Trained:
    """Train ``members``: vmapped together in one stack, or one after another.

    One after another with ``cfg.sequential``, with streamed data, or when the members'
    steps per epoch differ (folds of unequal size across a batch boundary). Returns, per member,
    the :class:`Fitted` stack that holds it and its position there.
    """
    steps = member_steps_per_epoch(members, cfg.batch_size)
    together = not cfg.sequential and uses_device_data(cfg) and len(members) > 1
    if together and len(steps) > 1:
        log(f"{stack_tag}: steps per epoch differ ({sorted(steps)}); training one at a time")
        together = False
    if together:
        fitted = fit_run(images, members, tag=stack_tag, **kwargs)
        return [(fitted, i) for i in range(len(members))]
    return [(fit_run(images, [m], tag=m.tag, **kwargs), 0) for m in members]


def run_protocol(
    cfg: config_lib.Config,
    data: NoisyData,
    fit_run: Callable[..., Fitted],
    protocol: Protocol,
    log: Callable[[str], None],
) -> tuple[dict, dict]:
    """Train a protocol's models (:func:`fit_members`) and finish it."""
    trained = []
    if protocol.members:
        trained = fit_members(
            cfg, fit_run, data.images, protocol.members, stack_tag=protocol.stack_tag,
            log=log, **protocol.fit_kwargs,
        )  # fmt: skip
    return protocol.finish(trained)


def by_stack(trained: Trained) -> list[tuple[Fitted, dict[int, int]]]:
    """:func:`fit_members`' result grouped by stack: ``(fitted, {member index: position})``."""
    stacks: list[tuple[Fitted, dict[int, int]]] = []
    for j, (fitted, i) in enumerate(trained):
        group = next((g for g in stacks if g[0] is fitted), None)
        if group is None:
            group = (fitted, {})
            stacks.append(group)
        group[1][j] = i
    return stacks


def training_outputs(fitted: Fitted, position: int) -> dict[str, np.ndarray]:
    """One member's outputs on every training row, against its own labels."""
    return {k: v[position] for k, v in fitted.training_outputs().items()}


def predictions(out: dict[str, np.ndarray], data: NoisyData) -> dict[str, np.ndarray]:
    """What ``predictions.npz`` holds for every protocol: the outputs and the labels."""
    return {
        "p_t": out["p_t"],
        "probs": out["probs"],
        "margin": out["margin"],
        "pred": out["pred"],
        "weight": out["weight"],
        "given_label": data.given_label,
        "true_label": data.true_label,
        "is_corrupted": data.is_corrupted,
    }
