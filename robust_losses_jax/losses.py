"""Per-example classification losses for training on noisy labels.

Every loss is a pure function ``fn(logits, labels, **hparams) -> per_example_loss``:

- ``logits``: float array ``[..., C]`` of any float dtype; the loss is computed in float32.
- ``labels``: integer array ``[...]`` in ``[0, C)``: the *given* (possibly wrong) labels.
- result: float32 array of shape ``labels.shape``. There is no reduction: the mean is taken once, in
  the train step, so training, evaluation and detection share one function.

Hyperparameters may be Python numbers or traced JAX values, so a schedule can change ``gamma`` or
``tau`` inside a jitted train step without recompiling. Concrete values are checked against their
domain (``ValueError`` naming the value and the allowed range); traced values cannot be checked.

``p_t``, the softmax probability of the given label, is ``exp(log p_t)``, never ``log(softmax)``
of a rounded probability: values and gradients stay finite for logits up to +-1e4 and for ``p_t``
that underflows to 0. In ``cross_entropy``, ``focal``, ``power``, ``cutoff`` and ``gce``,
``log p_t`` is the negative of optax's integer-label cross-entropy (a stable logsumexp), so
``power(gamma=0)``, ``cutoff(tau=0)`` and ``focal(gamma=0)`` equal cross-entropy bit for bit. The
losses with a ``1 - p_t`` term of their own (``sce``, ``mae``, ``nce_rce``, ``nce_mae``, ``poly1``)
take ``log p_t`` from one log-softmax and compute ``1 - p_t`` as the other classes' summed
probability where ``p_t > 1/2``, to keep float32's relative precision as ``p_t -> 1``.

Labels index like numpy (``-1`` is the last class); a label outside ``[-C, C)`` or a NaN logit
gives a NaN loss, never a silent 0, so the train step's finiteness check stops the run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
LossFn = Callable[..., Array]

# Published constants of the baselines.
SCE_LABEL_CLAMP = 1e-4  # Wang et al. 2019: the one-hot is clamped to [1e-4, 1], A = log(1e-4).
ANL_MIN_PROB = 1e-7  # Ye et al. 2023: probabilities are clamped to [1e-7, 1] inside NNCE.


# --------------------------------------------------------------------------------------------------
# Building blocks.
# --------------------------------------------------------------------------------------------------


def _as_float32(logits: ArrayLike) -> Array:
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"logits must be a float array, got dtype {logits.dtype}.")
    return logits.astype(jnp.float32)


def log_p_t(logits: ArrayLike, labels: ArrayLike) -> Array:
    """Log-probability of the given label, ``log softmax(logits)[label]``.

    Args:
      logits: ``[..., C]`` float.
      labels: ``[...]`` int.

    Returns:
      ``[...]`` float32, always finite for finite logits (``<= 0``).
    """
    return -optax.losses.softmax_cross_entropy_with_integer_labels(_as_float32(logits), labels)


def p_t(logits: ArrayLike, labels: ArrayLike) -> Array:
    """Softmax probability of the given label, ``exp(log p_t)``: ``[...]`` float32 in ``[0, 1]``."""
    return jnp.exp(log_p_t(logits, labels))


def _one_minus_exp(log_p: Array) -> Array:
    """``1 - exp(log_p)``, accurate when ``p`` is close to 1 (where ``1 - p`` would cancel)."""
    return -jnp.expm1(log_p)


def _one_minus_p_t(log_probs: Array, log_pt: Array, labels: ArrayLike) -> Array:
    """``1 - p_t``, accurate to float32's relative precision for every ``p_t``.

    ``[..., C], [...], [...] -> [...]``. Near ``p_t = 1``, ``log p_t`` holds the rounding of
    ``log(1 + others)`` (about float32's eps, absolute), so ``1 - exp(log p_t)`` loses relative
    precision as ``p_t -> 1`` (6.6e-5 at ``1 - p_t = 0.005``, all of it at ``1e-6``); there the
    other classes' summed probability is used instead. Below
    ``p_t = 1/2`` that sum's gradient would cancel (``p_j - p_j (1 - p_t)``), so ``expm1`` is kept.
    """
    num_classes = log_probs.shape[-1]
    # The label wrapped as `_take_label`'s gather wraps it (numpy indexing: -1 is the last class),
    # so the mask and log p_t name the same class for every label the gather accepts.
    is_label = jnp.arange(num_classes) == jnp.expand_dims(jnp.mod(labels, num_classes), -1)
    others = jnp.sum(jnp.where(is_label, 0.0, jnp.exp(log_probs)), axis=-1)
    return jnp.where(log_pt > -math.log(2.0), others, _one_minus_exp(log_pt))


def _kept(log_pt: Array, tau: ArrayLike) -> Array:
    """The examples ``power`` and ``cutoff`` keep, ``[...]`` bool, with no gradient.

    ``not p_t < tau`` rather than ``p_t >= tau``: a NaN ``p_t`` (a NaN logit, a label outside
    ``[-C, C)``) is kept, so the loss is NaN rather than a silent 0.
    """
    return jax.lax.stop_gradient(~(jnp.exp(log_pt) < tau))


def _p_t_to_the(log_pt: Array, exponent: ArrayLike) -> Array:
    """``p_t**exponent`` as ``exp(exponent * log p_t)``: finite, with a finite gradient, even where
    ``p_t`` underflows to 0."""
    return jnp.exp(exponent * log_pt)


def _safe_pow(base: Array, exponent: ArrayLike) -> Array:
    """``base ** exponent`` for ``base >= 0`` with finite gradients at ``base == 0``.

    ``jnp.power`` has gradient ``0 * inf = nan`` at 0 for ``exponent <= 1``. Here ``0 ** 0 = 1``,
    ``0 ** e = 0`` for ``e > 0``, and the gradient at ``base == 0`` is 0 (the double-``where``
    keeps the untaken branch's nan out of the gradient).
    """
    positive = base > 0
    safe_base = jnp.where(positive, base, 1.0)
    at_zero = jnp.where(jnp.asarray(exponent) == 0, 1.0, 0.0)
    return jnp.where(positive, safe_base**exponent, at_zero)


def _normalized_ce(log_probs: Array, log_pt: Array) -> Array:
    """NCE (Ma et al. 2020): ``-log p_t / sum_k -log p_k``, in ``[0, 1]``."""
    return log_pt / jnp.sum(log_probs, axis=-1)


def _reverse_ce(one_minus_pt: Array, label_clamp: ArrayLike) -> Array:
    """RCE: ``-sum_k p_k log y_k`` with the one-hot ``y`` clamped to ``[label_clamp, 1]``.

    ``log 1 = 0`` for the given class and ``log(label_clamp) = A`` for the others, so it is
    ``-A * (1 - p_t)``. (The reference code also clamps ``p`` to ``[1e-7, 1]``; that changes the
    value by at most ``C * 1e-7 * |A|`` and is left out.)
    """
    return -jnp.log(label_clamp) * one_minus_pt


def _log_softmax(logits: ArrayLike) -> Array:
    return jax.nn.log_softmax(_as_float32(logits), axis=-1)


def _take_label(values: Array, labels: ArrayLike) -> Array:
    return jnp.take_along_axis(values, jnp.expand_dims(labels, -1), axis=-1)[..., 0]


# --------------------------------------------------------------------------------------------------
# The losses.
# --------------------------------------------------------------------------------------------------


def cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Array:
    """Cross-entropy ``-log p_t`` (optax's ``softmax_cross_entropy_with_integer_labels``).

    Args:
      logits: ``[..., C]``.
      labels: ``[...]`` int.

    Returns:
      ``[...]`` float32.
    """
    return optax.losses.softmax_cross_entropy_with_integer_labels(_as_float32(logits), labels)


def focal(logits: ArrayLike, labels: ArrayLike, *, gamma: ArrayLike = 2.0) -> Array:
    """Softmax focal loss (Lin et al. 2017): ``-(1 - p_t)**gamma * log p_t``.

    Up-weights hard examples; the gradient flows through the weight, as in the original.
    ``gamma = 0`` is cross-entropy. ``[..., C], [...] -> [...]``.
    """
    _check_hparams("focal", gamma=gamma)
    log_pt = log_p_t(logits, labels)
    return -_safe_pow(_one_minus_exp(log_pt), gamma) * log_pt


def power(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: ArrayLike = 2.0,
    tau: ArrayLike = 0.0,
    detach: bool = True,
) -> Array:
    """The paper's Blurry Loss: ``-sg(p_t)**gamma * log p_t``, zero where ``p_t < tau``.

    De-weights hard (likely mislabelled) examples. With ``detach=True`` (default) the weight
    ``p_t**gamma`` is a constant for the gradient, which is then exactly ``p_t**gamma`` times
    cross-entropy's. ``detach=False`` differentiates the weight too; that loss vanishes both as
    ``p_t -> 1`` and ``p_t -> 0``, so predicting one class is a global minimum and training can
    collapse. ``tau > 0`` combines it with :func:`cutoff`. ``gamma = tau = 0`` is cross-entropy.

    Note: the detached gradient equals that of :func:`gce` with ``q = gamma``.

    Args:
      logits: ``[..., C]``.
      labels: ``[...]`` int.
      gamma: exponent of the weight, ``>= 0``.
      tau: cutoff on ``p_t`` in ``[0, 1)``; the mask has no gradient.
      detach: stop the gradient through the weight ``p_t**gamma``.

    Returns:
      ``[...]`` float32.
    """
    _check_hparams("power", gamma=gamma, tau=tau)
    log_pt = log_p_t(logits, labels)
    weight = _p_t_to_the(log_pt, gamma)
    if detach:
        weight = jax.lax.stop_gradient(weight)
    return jnp.where(_kept(log_pt, tau), -weight * log_pt, 0.0)


def cutoff(logits: ArrayLike, labels: ArrayLike, *, tau: ArrayLike = 0.1) -> Array:
    """The paper's Piecewise-zero Loss: ``-log p_t`` where ``p_t >= tau``, else 0.

    Ignores examples the model finds too unlikely (loss and gradient are 0 below ``tau``).
    ``tau = 0`` is cross-entropy. ``[..., C], [...] -> [...]``.
    """
    _check_hparams("cutoff", tau=tau)
    log_pt = log_p_t(logits, labels)
    return jnp.where(_kept(log_pt, tau), -log_pt, 0.0)


def gce(logits: ArrayLike, labels: ArrayLike, *, q: ArrayLike = 0.7) -> Array:
    """Generalised cross-entropy (Zhang & Sabuncu 2018): ``(1 - p_t**q) / q``.

    ``q -> 0`` tends to cross-entropy, ``q = 1`` is MAE. ``[..., C], [...] -> [...]``.
    """
    _check_hparams("gce", q=q)
    return _one_minus_exp(q * log_p_t(logits, labels)) / q


# --------------------------------------------------------------------------------------------------
# Gradient weights: the factor by which a loss scales cross-entropy's gradient, per example.
# --------------------------------------------------------------------------------------------------


def _power_weight(log_pt: Array, *, gamma: ArrayLike = 2.0, tau: ArrayLike = 0.0, **_) -> Array:
    # The detached loss's gradient is exactly this times cross-entropy's.
    return jnp.where(_kept(log_pt, tau), _p_t_to_the(log_pt, gamma), 0.0)


def _cutoff_weight(log_pt: Array, *, tau: ArrayLike = 0.1, **_) -> Array:
    return _kept(log_pt, tau).astype(jnp.float32)


def _focal_weight(log_pt: Array, *, gamma: ArrayLike = 2.0, **_) -> Array:
    # The loss's own factor; the gradient through it (focal does not detach it) is left aside.
    return _safe_pow(_one_minus_exp(log_pt), gamma)


def _gce_weight(log_pt: Array, *, q: ArrayLike = 0.7, **_) -> Array:
    # d/dz (1 - p_t**q) / q = p_t**q * d/dz (-log p_t).
    return _p_t_to_the(log_pt, q)


def gradient_weight(name: str, logits: ArrayLike, labels: ArrayLike, **hparams: Any) -> Array:
    """The factor by which loss ``name`` scales cross-entropy's gradient, per example, ``[...]``.

    power: ``p_t**gamma`` where kept (0 below ``tau``); cutoff: ``[p_t >= tau]``; focal:
    ``(1 - p_t)**gamma`` (its weight's own gradient aside); gce: ``p_t**q``; the other losses: 1
    (reported, not meaningful). The same expressions the losses use, so a NaN ``p_t`` is kept by
    both (``power``/``cutoff``'s mask). ``hparams``: the loss's, defaults as in the loss.
    """
    weight_fn = loss_spec(name).weight
    log_pt = log_p_t(logits, labels)
    if weight_fn is None:
        return jnp.ones_like(log_pt)
    return weight_fn(log_pt, **hparams)


def sce(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: ArrayLike = 0.1,
    beta: ArrayLike = 1.0,
    label_clamp: ArrayLike = SCE_LABEL_CLAMP,
) -> Array:
    """Symmetric cross-entropy (Wang et al. 2019): ``alpha * CE + beta * RCE``.

    RCE is ``-A (1 - p_t)`` with ``A = log(label_clamp)``. ``[..., C], [...] -> [...]``.
    """
    _check_hparams("sce", alpha=alpha, beta=beta, label_clamp=label_clamp)
    log_probs = _log_softmax(logits)
    log_pt = _take_label(log_probs, labels)
    rce = _reverse_ce(_one_minus_p_t(log_probs, log_pt, labels), label_clamp)
    return alpha * -log_pt + beta * rce


def mae(logits: ArrayLike, labels: ArrayLike) -> Array:
    """Mean absolute error on the probabilities (Ghosh et al. 2017), as in APL: ``1 - p_t``."""
    log_probs = _log_softmax(logits)
    return _one_minus_p_t(log_probs, _take_label(log_probs, labels), labels)


def nce_rce(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: ArrayLike = 1.0,
    beta: ArrayLike = 1.0,
    label_clamp: ArrayLike = SCE_LABEL_CLAMP,
) -> Array:
    """Active-passive loss NCE+RCE (Ma et al. 2020): ``alpha * NCE + beta * RCE``.

    NCE is ``-log p_t / sum_k -log p_k``; RCE as in :func:`sce`. ``[..., C], [...] -> [...]``.
    """
    _check_hparams("nce_rce", alpha=alpha, beta=beta, label_clamp=label_clamp)
    log_probs = _log_softmax(logits)
    log_pt = _take_label(log_probs, labels)
    rce = _reverse_ce(_one_minus_p_t(log_probs, log_pt, labels), label_clamp)
    return alpha * _normalized_ce(log_probs, log_pt) + beta * rce


def nce_mae(
    logits: ArrayLike, labels: ArrayLike, *, alpha: ArrayLike = 1.0, beta: ArrayLike = 1.0
) -> Array:
    """Active-passive loss NCE+MAE (Ma et al. 2020): ``alpha * NCE + beta * (1 - p_t)``."""
    _check_hparams("nce_mae", alpha=alpha, beta=beta)
    log_probs = _log_softmax(logits)
    log_pt = _take_label(log_probs, labels)
    mae_term = _one_minus_p_t(log_probs, log_pt, labels)
    return alpha * _normalized_ce(log_probs, log_pt) + beta * mae_term


def anl_ce(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: ArrayLike = 5.0,
    beta: ArrayLike = 5.0,
    min_prob: ArrayLike = ANL_MIN_PROB,
) -> Array:
    """Active negative loss ANL-CE (Ye et al. 2023): ``alpha * NCE + beta * NNCE``.

    NNCE, the normalised negative cross-entropy, is ``1 - z_t / sum_k z_k`` with
    ``z_k = A + log max(p_k, min_prob)`` and ``A = -log(min_prob)``. The paper's L1 penalty on the
    weights belongs to the train step, not here. ``[..., C], [...] -> [...]``.
    """
    _check_hparams("anl_ce", alpha=alpha, beta=beta, min_prob=min_prob)
    log_probs = _log_softmax(logits)
    log_pt = _take_label(log_probs, labels)
    log_min_prob = jnp.log(min_prob)
    shifted = jnp.maximum(log_probs, log_min_prob) - log_min_prob  # in [0, A]
    nnce = 1.0 - _take_label(shifted, labels) / jnp.sum(shifted, axis=-1)
    return alpha * _normalized_ce(log_probs, log_pt) + beta * nnce


def poly1(logits: ArrayLike, labels: ArrayLike, *, epsilon: ArrayLike = 2.0) -> Array:
    """Poly-1 loss (Leng et al. 2022): ``-log p_t + epsilon * (1 - p_t)``.

    The same loss as optax's ``poly_loss_cross_entropy`` (a test checks it), computed from one
    log-softmax with integer labels rather than one-hot ones. ``[..., C], [...] -> [...]``.
    """
    _check_hparams("poly1", epsilon=epsilon)
    log_probs = _log_softmax(logits)
    log_pt = _take_label(log_probs, labels)
    return -log_pt + epsilon * _one_minus_p_t(log_probs, log_pt, labels)


# --------------------------------------------------------------------------------------------------
# Hyperparameter domains and the registry.
# --------------------------------------------------------------------------------------------------

# name -> (lowest, highest, lowest included, highest included, human-readable range).
_DOMAINS: dict[str, tuple[float, float, bool, bool, str]] = {
    "gamma": (0.0, math.inf, True, False, "gamma >= 0"),
    "tau": (0.0, 1.0, True, False, "0 <= tau < 1"),
    "q": (0.0, 1.0, False, True, "0 < q <= 1"),
    "alpha": (0.0, math.inf, True, False, "alpha >= 0"),
    "beta": (0.0, math.inf, True, False, "beta >= 0"),
    "label_clamp": (0.0, 1.0, False, False, "0 < label_clamp < 1"),
    "min_prob": (0.0, 1.0, False, False, "0 < min_prob < 1"),
    "epsilon": (-1.0, math.inf, True, False, "epsilon >= -1 (keeps the loss non-negative)"),
}


def _concrete_values(value: Any) -> np.ndarray | None:
    """The value as a NumPy array, or None when it is traced (and cannot be checked here)."""
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value, dtype=np.float64)


def _check_hparams(loss_name: str, **hparams: Any) -> None:
    """Raise ValueError for a concrete hyperparameter (scalar or stacked) outside its domain."""
    for name, value in hparams.items():
        values = _concrete_values(value)
        if values is None or values.size == 0:
            continue
        spec = _REGISTRY.get(loss_name)
        low, high, low_ok, high_ok, allowed = _domain(spec, name) if spec else _DOMAINS[name]
        above_low = (values > low) | (low_ok & (values == low))
        below_high = (values < high) | (high_ok & (values == high))
        if not np.all(above_low & below_high):  # NaN fails both comparisons.
            raise ValueError(
                f"{loss_name}: {name}={value!r} is outside its domain; allowed: {allowed}."
            )


Domain = tuple[float, float, bool, bool, str]  # low, high, low allowed, high allowed, in words.


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A loss, described once: everything the library, the command line and the docs need.

    Attributes:
      name: the canonical name (``--loss=NAME``).
      fn: ``fn(logits [..., C], labels [...], *, **hparams) -> [...]``; its keyword-only
        arguments and their defaults are the loss's hyperparameters.
      description: one line for ``--help``; default: the first line of ``fn``'s docstring.
      aliases: other names accepted for it.
      weight: ``weight(log_p_t, **hparams) -> [...]``, the factor by which the loss scales
        cross-entropy's gradient (None: not defined, reported as 1).
      delayed: trained after ``config.DEFAULT_DELAY_EPOCHS`` of cross-entropy by default.
      domains: the allowed values of hyperparameters that :data:`_DOMAINS` does not know (a
        name there keeps its shared domain unless given here).
      rampable: hyperparameters whose value 0 makes the loss cross-entropy: with ``--ramp``
        they rise from 0 to their values after the delay (the others apply as they are).
    """

    name: str
    fn: LossFn
    description: str = ""
    aliases: tuple[str, ...] = ()
    weight: Callable[..., Array] | None = None
    delayed: bool = False
    domains: Mapping[str, Domain] = dataclasses.field(default_factory=dict)
    rampable: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """:attr:`description`, or the first line of ``fn``'s docstring."""
        return self.description or (self.fn.__doc__ or self.name).strip().splitlines()[0]

    @property
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters with their defaults, read off ``fn``'s signature."""
        return dict(self.fn.__kwdefaults__ or {})


_REGISTRY: dict[str, LossSpec] = {}
_ALIASES: dict[str, str] = {}


def register_loss(spec: LossSpec) -> LossSpec:
    """Add ``spec`` to the losses every part of the project offers (``--loss``, the sweep,
    config validation, :func:`get_loss`); returns it. ``ValueError`` for a name or alias that
    is taken, or a hyperparameter without a domain."""
    for name in (spec.name, *spec.aliases):
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"a loss named {name!r} is already registered.")
    numeric = [k for k, v in spec.hparams.items() if not isinstance(v, bool)]  # power's detach.
    if set(spec.rampable) - set(numeric):
        raise ValueError(
            f"{spec.name}: rampable {', '.join(sorted(set(spec.rampable) - set(numeric)))} "
            f"is not among its numeric hyperparameters ({', '.join(numeric) or 'none'})."
        )
    unknown = sorted(k for k in numeric if k not in spec.domains and k not in _DOMAINS)
    if unknown:
        raise ValueError(
            f"{spec.name}: hyperparameter(s) {', '.join(unknown)} need a domain "
            "(LossSpec.domains: name -> (low, high, low allowed, high allowed, in words))."
        )
    _REGISTRY[spec.name] = spec
    _ALIASES.update({alias: spec.name for alias in spec.aliases})
    return spec


def loss_spec(name: str) -> LossSpec:
    """The :class:`LossSpec` of ``name`` (an alias works); else ValueError."""
    return _REGISTRY[canonical_name(name)]


def registered_losses() -> tuple[LossSpec, ...]:
    """Every registered loss, in registration order."""
    return tuple(_REGISTRY.values())


# The built-in losses, in the order --help lists them.
for _spec in (
    LossSpec("cross_entropy", cross_entropy, aliases=("ce",)),
    LossSpec("focal", focal, weight=_focal_weight, rampable=("gamma",)),
    LossSpec(
        "power",
        power,
        aliases=("blurry",),
        weight=_power_weight,
        delayed=True,
        rampable=("gamma", "tau"),
    ),
    LossSpec(
        "cutoff",
        cutoff,
        aliases=("piecewise_zero",),
        weight=_cutoff_weight,
        delayed=True,
        rampable=("tau",),
    ),
    LossSpec("gce", gce, weight=_gce_weight),
    LossSpec("sce", sce),
    LossSpec("mae", mae),
    LossSpec("nce_rce", nce_rce),
    LossSpec("nce_mae", nce_mae),
    LossSpec("anl_ce", anl_ce),
    LossSpec("poly1", poly1),
):
    register_loss(_spec)


def losses_markdown() -> str:
    """Every registered loss as a markdown table: name and aliases, its description, its
    hyperparameters (default; allowed values), whether it is delayed by default and what
    ``--ramp`` raises (docs/losses.md holds the built-ins'; a test keeps the two equal)."""
    rows = [
        "| name (aliases) | loss | hyperparameters (default; allowed) | delayed | ramped |",
        "|---|---|---|---|---|",
    ]
    for spec in registered_losses():
        names = f"`{spec.name}`" + (
            f" ({', '.join(f'`{a}`' for a in spec.aliases)})" if spec.aliases else ""
        )
        hparams = "; ".join(
            f"`{k}={v}`" + ("" if isinstance(v, bool) else f" ({_domain(spec, k)[4]})")
            for k, v in spec.hparams.items()
        )
        summary = spec.summary.replace("``", "`").replace("|", "\\|")
        rows.append(
            f"| {names} | {summary} | {hparams} | {'yes' if spec.delayed else ''} | "
            f"{', '.join(spec.rampable)} |"
        )
    return "\n".join(rows) + "\n"


def _domain(spec: LossSpec, name: str) -> Domain:
    return spec.domains[name] if name in spec.domains else _DOMAINS[name]


def available_losses() -> tuple[str, ...]:
    """Every name :func:`get_loss` accepts, aliases included, sorted."""
    return tuple(sorted([*_REGISTRY, *_ALIASES]))


def canonical_name(name: str) -> str:
    """The registry name behind ``name`` (``'ce'`` gives ``'cross_entropy'``); else ValueError."""
    name = _ALIASES.get(name, name)
    if name not in _REGISTRY:
        raise ValueError(f"Unknown loss {name!r}; available: {', '.join(available_losses())}.")
    return name


def loss_hparams(name: str) -> Mapping[str, Any]:
    """The hyperparameters of loss ``name`` with their default values."""
    return loss_spec(name).hparams


def get_loss(name: str, **hparams: Any) -> LossFn:
    """Look up a loss by name and bind its hyperparameters.

    Args:
      name: one of :func:`available_losses`.
      **hparams: hyperparameters of that loss (see :func:`loss_hparams`), checked against their
        domains.

    Returns:
      ``fn(logits, labels, **overrides) -> per_example_loss``; keyword overrides (e.g. a traced
      ``gamma`` from a schedule) replace the bound values.

    Raises:
      ValueError: unknown loss, a hyperparameter the loss does not take, or a value outside its
        domain.
    """
    canonical = canonical_name(name)
    allowed = _REGISTRY[canonical].hparams
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) if allowed else "no hyperparameters"
        raise ValueError(f"Loss {name!r} does not take {', '.join(unknown)}; it takes: {takes}.")
    if "detach" in hparams and not isinstance(hparams["detach"], bool):
        raise ValueError(f"power: detach={hparams['detach']!r} must be True or False.")
    _check_hparams(canonical, **{k: v for k, v in hparams.items() if k != "detach"})
    fn = _REGISTRY[canonical].fn
    return functools.partial(fn, **hparams) if hparams else fn
