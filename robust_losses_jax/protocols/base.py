"""What every detection protocol shares: the detector registry, the set-up object, training
its models, their outputs.

A :class:`Detector` is one way of finding label errors, registered under its ``--detector``
name (:func:`register_detector`): how it sets up a run (its :class:`Protocol`), which examples
it flags, how many models it trains and which settings it reads. A :class:`Protocol` is the list
of models a run still needs (a :class:`training.loop.Stack`, as :func:`training.loop.fit` trains
them) and a ``finish`` function that turns the trained stack into the run's predictions and
extra scores. The built-in detectors are the modules beside this one (:mod:`in_sample`,
:mod:`cross_validation`, :mod:`aum`), each registering itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax.noisy_data import NoisyData
from robust_losses_jax.split import Split
from robust_losses_jax.training.engines import uses_device_data
from robust_losses_jax.training.loop import Fitted, Stack, member_steps_per_epoch
from robust_losses_jax.training.stacking import Member

# Per-example outputs a held-out (out-of-sample) evaluation keeps.
OUT_OF_SAMPLE = ("logits", "probs", "p_t", "margin", "pred", "weight")

Trained = list[tuple[Fitted, int]]  # Per member: the Fitted stack holding it, its position.


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A run's detection protocol, set up: the models it still needs and what it makes of them.

    Attributes:
      stack: the models to train (fewer than the protocol's when an interrupted run saved
        some: a finished fold is not trained again), as :func:`training.loop.fit` trains them
        together (their outputs, the tag of their checkpoints, what is tracked).
      finish: ``trained -> (predictions, extra)``, given per member the :class:`Fitted` stack
        that holds it and its position there (:func:`fit_members`' result). The stack may hold
        other runs' models too (a sweep trains several runs' models together).
    """

    stack: Stack
    finish: Callable[[Trained], tuple[dict, dict]]

    @property
    def members(self) -> list[Member]:
        return self.stack.members


Log = Callable[[str], None]
# ``(cfg, data, base_key, workdir, log) -> Protocol``: ``base_key`` is ``jax.random.key(cfg.seed)``,
# ``workdir`` the run's folder (where K-fold keeps finished folds).
ProtocolFn = Callable[[config_lib.Config, NoisyData, jax.Array, Path, Log], Protocol]


def _one_model(cfg: config_lib.Config) -> int:
    return 1


@dataclasses.dataclass(frozen=True)
class Detector:
    """A way of finding label errors, described once: what every part of the project needs.

    Attributes:
      name: ``--detector=NAME`` (and the sweep's ``--detectors``).
      description: one line for ``--help``.
      protocol: sets up a run: ``(cfg, data, base_key, workdir, log) ->`` :class:`Protocol`.
      flags: ``predictions -> [N] bool``: the examples it flags, read from the arrays its
        protocol's ``finish`` put in ``predictions.npz`` (an audit's ``is_label_issue``).
      num_models: ``cfg -> int``: the models a run trains (the sweep sizes its stacks by it).
      out_of_sample: whether every example's probabilities come from a model that did not
        train on it (an audit says which its flags rest on).
      settings: the ``Config`` fields only this detector reads (``--folds`` for ``cl``).
        ``holdout`` among them says it holds a slice out of training when asked to
        (``--holdout``); a run of a detector without it is refused a nonzero ``--holdout``.
      check_data: ``(cfg, train split, test examples) ->`` the examples each model trains on;
        ``ValueError`` (one line) for a split it cannot use. Default: every example.
      scores: ``(key, label)``: its protocol's own scores go to ``summary.json``'s
        ``detection[key]`` and into the run's last line as ``label F1``; None: none.
    """

    name: str
    description: str
    protocol: ProtocolFn
    flags: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    num_models: Callable[[config_lib.Config], int] = _one_model
    out_of_sample: bool = False
    settings: tuple[str, ...] = ()
    check_data: Callable[[config_lib.Config, Split, int], int] | None = None
    scores: tuple[str, str] | None = None


_DETECTORS: dict[str, Detector] = {}


def register_detector(detector: Detector) -> Detector:
    """Add ``detector`` to those every part of the project offers (``--detector``, the sweep,
    the audit, :func:`protocols.protocol_for`); returns it. ``ValueError`` for a name that is
    taken or a setting that is not a ``Config`` field."""
    if detector.name in _DETECTORS:
        raise ValueError(f"a detector named {detector.name!r} is already registered.")
    fields = {f.name for f in dataclasses.fields(config_lib.Config)}
    unknown = sorted(set(detector.settings) - fields)
    if unknown:
        raise ValueError(f"{detector.name}: settings {', '.join(unknown)} are not Config fields.")
    _DETECTORS[detector.name] = detector
    return detector


def registered_detectors() -> tuple[Detector, ...]:
    """Every registered detector, in registration order."""
    return tuple(_DETECTORS.values())


def detector(name: str) -> Detector:
    """The registered :class:`Detector` called ``name``; else ``ValueError`` listing them."""
    if name not in _DETECTORS:
        raise ValueError(f"Unknown detector {name!r}; choose from {', '.join(_DETECTORS)}.")
    return _DETECTORS[name]


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
    cfg: config_lib.Config, fit_run: Callable[[Stack], Fitted], stack: Stack, log: Log
) -> Trained:
    """Train ``stack``'s members: vmapped together in one stack, or one after another.

    One after another with ``cfg.sequential``, with streamed data, or when the members'
    steps per epoch differ (folds of unequal size across a batch boundary). Returns, per member,
    the :class:`Fitted` stack that holds it and its position there.
    """
    members = stack.members
    steps = member_steps_per_epoch(members, cfg.batch_size)
    together = not cfg.sequential and uses_device_data(cfg) and len(members) > 1
    if together and len(steps) > 1:
        log(f"{stack.tag}: steps per epoch differ ({sorted(steps)}); training one at a time")
        together = False
    if together:
        fitted = fit_run(stack)
        return [(fitted, i) for i in range(len(members))]
    return [(fit_run(stack.alone(m)), 0) for m in range(len(members))]


def run_protocol(
    cfg: config_lib.Config, fit_run: Callable[[Stack], Fitted], protocol: Protocol, log: Log
) -> tuple[dict, dict]:
    """Train a protocol's models (:func:`fit_members`; ``fit_run``: :func:`training.loop.fit`
    with the run's data and context bound) and finish it."""
    trained = fit_members(cfg, fit_run, protocol.stack, log) if protocol.members else []
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
