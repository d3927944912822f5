"""Tests for robust_losses_jax.losses: closed forms, identities, gradients, numerics, registry."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from robust_losses_jax import losses

# --------------------------------------------------------------------------------------------------
# Closed forms, written independently in float64 NumPy from the papers' formulas.
# --------------------------------------------------------------------------------------------------


def np_log_softmax(logits):
    x = np.asarray(logits, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_one_hot(labels, num_classes):
    return (np.asarray(labels)[..., None] == np.arange(num_classes)).astype(np.float64)


def np_parts(logits, labels):
    log_probs = np_log_softmax(logits)
    one_hot = np_one_hot(labels, log_probs.shape[-1])
    log_pt = (log_probs * one_hot).sum(-1)
    return log_probs, one_hot, log_pt, np.exp(log_pt)


def np_rce(log_probs, one_hot, clamp=1e-4):
    return -(np.exp(log_probs) * np.log(np.clip(one_hot, clamp, 1.0))).sum(-1)


def np_nce(log_probs, log_pt):
    return -log_pt / -log_probs.sum(-1)


def np_loss(name, logits, labels, **hp):
    log_probs, one_hot, log_pt, pt = np_parts(logits, labels)
    if name == "cross_entropy":
        return -log_pt
    if name == "focal":
        return -((1 - pt) ** hp.get("gamma", 2.0)) * log_pt
    if name == "power":
        gamma, tau = hp.get("gamma", 2.0), hp.get("tau", 0.0)
        return -(pt**gamma) * log_pt * (pt >= tau)
    if name == "cutoff":
        return -log_pt * (pt >= hp.get("tau", 0.1))
    if name == "gce":
        q = hp.get("q", 0.7)
        return (1 - pt**q) / q
    if name == "sce":
        return hp.get("alpha", 0.1) * -log_pt + hp.get("beta", 1.0) * np_rce(log_probs, one_hot)
    if name == "mae":
        return 1 - pt
    if name == "nce_rce":
        nce = np_nce(log_probs, log_pt)
        return hp.get("alpha", 1.0) * nce + hp.get("beta", 1.0) * np_rce(log_probs, one_hot)
    if name == "nce_mae":
        return hp.get("alpha", 1.0) * np_nce(log_probs, log_pt) + hp.get("beta", 1.0) * (1 - pt)
    if name == "anl_ce":
        min_prob = hp.get("min_prob", 1e-7)
        z = -np.log(min_prob) + np.log(np.clip(np.exp(log_probs), min_prob, 1.0))
        nnce = 1 - (z * one_hot).sum(-1) / z.sum(-1)
        return hp.get("alpha", 5.0) * np_nce(log_probs, log_pt) + hp.get("beta", 5.0) * nnce
    if name == "poly1":
        return -log_pt + hp.get("epsilon", 2.0) * (1 - pt)
    raise KeyError(name)


# Every registered loss is tested.
CANONICAL = tuple(spec.name for spec in losses.registered_losses())

# Non-default hyperparameters for each built-in loss, to check they are used.
CHOSEN_HPARAMS = {
    "cross_entropy": {},
    "focal": {"gamma": 0.5},
    "power": {"gamma": 0.5, "tau": 0.05},
    "cutoff": {"tau": 0.3},
    "gce": {"q": 0.3},
    "sce": {"alpha": 0.5, "beta": 2.0},
    "mae": {},
    "nce_rce": {"alpha": 10.0, "beta": 0.1},
    "nce_mae": {"alpha": 2.0, "beta": 3.0},
    "anl_ce": {"alpha": 1.0, "beta": 2.0, "min_prob": 1e-5},
    "poly1": {"epsilon": -1.0},
}


def other_values(spec: losses.LossSpec) -> dict[str, float]:
    """For each numeric hyperparameter, a value inside its domain other than its default."""
    out = {}
    for name, default in spec.hparams.items():
        if isinstance(default, bool):
            continue
        for value in (default * 0.5, default * 2, 0.5, 0.25, 2.0):
            try:
                losses.get_loss(spec.name, **{name: value})
            except ValueError:
                continue
            if value != default:
                out[name] = value
                break
    return out


# A loss registered without chosen values (a new one) gets values inside its domains.
OTHER_HPARAMS = {
    spec.name: CHOSEN_HPARAMS.get(spec.name, other_values(spec))
    for spec in losses.registered_losses()
}

SHAPES = ((8, 10), (3, 4, 7), (5,), (64, 100))


def random_logits(seed, shape, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=shape) * scale).astype(np.float32)
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    return logits, labels


def away_from_tau(logits, labels, hp, margin=1e-4):
    """True where p_t is not within `margin` of tau (float32 and float64 masks agree there)."""
    tau = hp.get("tau")
    if tau is None:
        return np.ones(np.shape(labels), bool)
    _, _, _, pt = np_parts(logits, labels)
    return np.abs(pt - tau) > margin


# --------------------------------------------------------------------------------------------------
# Closed forms, under jit and without.
# --------------------------------------------------------------------------------------------------


class ClosedFormTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(name=CANONICAL, shape=SHAPES, default_hparams=(True, False))
    def test_matches_numpy(self, name, shape, default_hparams):
        hp = {} if default_hparams else OTHER_HPARAMS[name]
        if name == "cutoff" and default_hparams:
            hp = {"tau": 0.1}
        logits, labels = random_logits(zlib.crc32(repr((name, shape)).encode()), shape)
        fn = self.variant(losses.get_loss(name, **hp))
        got = fn(logits, labels)
        chex.assert_shape(got, shape[:-1])
        chex.assert_type(got, jnp.float32)
        want = np_loss(name, logits, labels, **hp)
        keep = away_from_tau(logits, labels, hp)
        np.testing.assert_allclose(np.asarray(got)[keep], want[keep], rtol=2e-5, atol=2e-6)


def test_alias_is_the_same_function():
    assert losses.get_loss("ce") is losses.cross_entropy
    assert losses.canonical_name("blurry") == "power"
    assert losses.canonical_name("piecewise_zero") == "cutoff"
    assert "ce" in losses.available_losses()
    assert set(CANONICAL) <= set(losses.available_losses())


def test_cross_entropy_is_optax():
    import optax

    logits, labels = random_logits(0, (32, 10))
    want = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_array_equal(losses.cross_entropy(logits, labels), want)


def test_poly1_is_optax_poly_loss():
    import optax

    logits, labels = random_logits(1, (32, 10))
    one_hot = jax.nn.one_hot(labels, 10)
    want = optax.losses.poly_loss_cross_entropy(logits, one_hot, epsilon=2.0)
    np.testing.assert_allclose(losses.poly1(logits, labels), want, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Identities.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "name,hp",
    [("power", {"gamma": 0.0}), ("power", {"gamma": 0.0, "tau": 0.0, "detach": False}),
     ("cutoff", {"tau": 0.0}), ("focal", {"gamma": 0.0})],
)  # fmt: skip
@pytest.mark.slow
def test_reduces_to_cross_entropy_exactly(name, hp, shape):
    logits, labels = random_logits(2, shape, scale=10.0)
    fn = losses.get_loss(name, **hp)
    ce = losses.cross_entropy(logits, labels)
    np.testing.assert_array_equal(fn(logits, labels), ce)
    grad = jax.grad(lambda x: fn(x, labels).sum())(logits)
    grad_ce = jax.grad(lambda x: losses.cross_entropy(x, labels).sum())(logits)
    np.testing.assert_array_equal(grad, grad_ce)


def _grad_sum(fn, logits, labels):
    return jax.grad(lambda x: fn(x, labels).sum())(jnp.asarray(logits))


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.7])
@pytest.mark.parametrize("tau", [0.0, 0.2])
def test_detached_power_gradient_is_weighted_cross_entropy(gamma, tau):
    logits, labels = random_logits(3, (64, 10))
    grad = _grad_sum(losses.get_loss("power", gamma=gamma, tau=tau), logits, labels)
    grad_ce = _grad_sum(losses.cross_entropy, logits, labels)
    _, _, _, pt = np_parts(logits, labels)
    weight = pt**gamma * (pt >= tau)
    keep = away_from_tau(logits, labels, {"tau": tau})
    np.testing.assert_allclose(grad[keep], (weight[:, None] * grad_ce)[keep], rtol=1e-5, atol=1e-7)
    assert np.any(weight[keep] < 1.0) and np.any(weight[keep] > 0.0)


def test_undetached_power_gradient_differs_and_matches_closed_form():
    # d/dz of -p^g log p = -(g p^g log p + p^g) * dlogp/dz, with dlogp/dz = onehot - softmax.
    gamma = 2.0
    logits, labels = random_logits(4, (16, 6))
    grad = _grad_sum(losses.get_loss("power", gamma=gamma, detach=False), logits, labels)
    log_probs, one_hot, log_pt, pt = np_parts(logits, labels)
    dlogpt = one_hot - np.exp(log_probs)
    want = -(gamma * pt**gamma * log_pt + pt**gamma)[:, None] * dlogpt
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)


def test_cutoff_is_zero_with_zero_gradient_below_tau():
    tau = 0.3
    # Row 0: p_t ~ 0.88 (kept). Row 1: p_t ~ 0.0066 (cut). Row 2: p_t = 1/3 (kept, just).
    logits = jnp.array([[3.0, 0.0, 0.0], [0.0, 5.0, 0.0], [1.0, 1.0, 1.0]])
    labels = jnp.array([0, 0, 2])
    loss = np.asarray(losses.cutoff(logits, labels, tau=tau))
    grad = np.asarray(_grad_sum(lambda x, y: losses.cutoff(x, y, tau=tau), logits, labels))
    ce = np.asarray(losses.cross_entropy(logits, labels))
    grad_ce = np.asarray(_grad_sum(losses.cross_entropy, logits, labels))
    assert float(loss[1]) == 0.0
    np.testing.assert_array_equal(grad[1], np.zeros(3))
    np.testing.assert_array_equal(loss[[0, 2]], ce[[0, 2]])
    np.testing.assert_array_equal(grad[[0, 2]], grad_ce[[0, 2]])
    # power's tau cuts the same examples.
    np.testing.assert_array_equal(losses.power(logits, labels, gamma=1.0, tau=tau)[1], 0.0)


SMOOTH = {  # Losses whose value is differentiable at these logits, with their hyperparameters.
    "cross_entropy": {}, "focal": {"gamma": 2.0}, "focal_small_gamma": {"gamma": 0.5},
    "power_undetached": {"gamma": 1.5, "detach": False}, "cutoff": {"tau": 0.01},
    "gce": {"q": 0.7}, "sce": {}, "mae": {}, "nce_rce": {}, "nce_mae": {}, "anl_ce": {},
    "poly1": {},
}  # fmt: skip


@pytest.mark.parametrize("key", sorted(SMOOTH))
def test_gradient_matches_finite_differences(key):
    name = key.replace("_small_gamma", "").replace("_undetached", "")
    fn = losses.get_loss(name, **SMOOTH[key])
    logits, labels = random_logits(5, (6, 5), scale=1.0)
    if name == "cutoff":
        assert np.all(np_parts(logits, labels)[3] > 0.02)  # No example near tau.
    grad = np.asarray(jax.grad(lambda x: jnp.sum(fn(x, labels)))(logits), np.float64)
    hp64 = {k: v for k, v in SMOOTH[key].items() if k != "detach"}
    rng = np.random.default_rng(0)
    eps = 1e-3
    for _ in range(4):
        direction = rng.normal(size=logits.shape)
        # Central differences of the float64 closed form (float32 would drown them in rounding).
        up = np_loss(name, logits + eps * direction, labels, **hp64).sum()
        down = np_loss(name, logits - eps * direction, labels, **hp64).sum()
        numeric = (up - down) / (2 * eps)
        np.testing.assert_allclose((grad * direction).sum(), numeric, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Transformations: jit, vmap, grad.
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", CANONICAL)
def test_jit_vmap_grad_agree(name):
    fn = losses.get_loss(name, **OTHER_HPARAMS[name])
    logits, labels = random_logits(6, (4, 8, 10))
    eager = fn(logits, labels)
    jitted = jax.jit(fn)(logits, labels)
    vmapped = jax.vmap(fn)(logits, labels)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-6, atol=1e-7)
    # Per-example gradients by vmap(grad) equal the gradient of the sum.
    per_example = jax.vmap(jax.vmap(jax.grad(lambda x, y: fn(x[None], y[None])[0])))(
        jnp.asarray(logits), jnp.asarray(labels)
    )
    whole = jax.jit(jax.grad(lambda x: fn(x, labels).sum()))(logits)
    np.testing.assert_allclose(per_example, whole, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in CANONICAL if OTHER_HPARAMS[name]])
def test_traced_hyperparameters_compile_once(name):
    hp_values = OTHER_HPARAMS[name]
    hp_values = {k: v for k, v in hp_values.items() if k != "detach"}
    fn = losses.get_loss(name)
    logits, labels = random_logits(7, (16, 10))
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss_and_grad(logits, hparams):
        return jax.value_and_grad(lambda x: fn(x, labels, **hparams).mean())(logits)

    results = []
    for scale in (1.0, 0.5, 0.25):
        hparams = {k: jnp.float32(v * scale) for k, v in hp_values.items()}
        results.append(loss_and_grad(logits, hparams))
        # The traced value is the one used: same as binding it concretely.
        concrete = jax.tree.map(float, hparams)
        np.testing.assert_allclose(results[-1][0], fn(logits, labels, **concrete).mean(), rtol=1e-6)
    assert loss_and_grad._cache_size() == 1


# --------------------------------------------------------------------------------------------------
# Numerics: bfloat16, extreme logits, underflowing p_t.
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", CANONICAL)
def test_bfloat16_inputs(name):
    fn = losses.get_loss(name, **OTHER_HPARAMS[name])
    logits, labels = random_logits(8, (32, 10))
    logits_bf16 = jnp.asarray(logits, jnp.bfloat16)
    got = fn(logits_bf16, labels)
    chex.assert_type(got, jnp.float32)
    # Computed in float32 from the bfloat16 values.
    np.testing.assert_array_equal(got, fn(logits_bf16.astype(jnp.float32), labels))
    grad = jax.grad(lambda x: fn(x, labels).sum())(logits_bf16)
    chex.assert_type(grad, jnp.bfloat16)
    chex.assert_tree_all_finite(grad)


EXTREME = np.array(
    [[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 0.0], [-1e4, -1e4, -1e4],
     [200.0, -200.0, 0.0], [30.0, 0.0, -30.0]],
    np.float32,
)  # fmt: skip
EXTREME_LABELS = np.array([1, 1, 0, 2, 1, 2])  # p_t: 0, 1, 1/3, 1/3, ~0 (underflows), ~1e-26.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    "name,hp",
    [(name, OTHER_HPARAMS[name]) for name in CANONICAL]
    + [("power", {"gamma": 0.5, "detach": False}), ("power", {"gamma": 3.0, "tau": 0.5})],
)
@pytest.mark.slow
def test_extreme_logits_are_finite(name, hp, dtype):
    fn = losses.get_loss(name, **hp)
    logits = jnp.asarray(EXTREME, dtype)
    value, grad = jax.value_and_grad(lambda x: fn(x, EXTREME_LABELS).sum())(logits)
    per_example = fn(logits, EXTREME_LABELS)
    chex.assert_tree_all_finite((value, grad, per_example))
    assert np.all(np.asarray(per_example) >= 0.0)
    assert float(losses.p_t(logits, EXTREME_LABELS)[0]) == 0.0  # Underflows, still finite.


@pytest.mark.slow
@pytest.mark.parametrize("name,hp", [("mae", {}), ("sce", {"alpha": 0.0, "beta": 1.0})])
def test_one_minus_p_t_keeps_its_relative_precision_as_p_t_nears_one(name, hp):
    """Large logits and ``1 - p_t`` from 1e-6 to 1: MAE and RCE within 1e-5 of float64.

    ``log p_t`` is only known to about ``eps * max|logit|``, so ``1 - exp(log p_t)`` has a relative
    error up to 1.0 here at the confident end (-log p_t itself keeps that absolute error).
    """
    margins = np.linspace(0.0, 16.0, 33, dtype=np.float32)  # 1 - p_t ~ 9 e^-margin.
    logits = np.full((33, 10), 50.0, np.float32)
    logits[:, 3] += margins
    labels = np.full(33, 3)
    fn = losses.get_loss(name, **hp)
    np.testing.assert_allclose(fn(logits, labels), np_loss(name, logits, labels, **hp), rtol=1e-5)
    chex.assert_tree_all_finite(jax.grad(lambda x: fn(x, labels).sum())(logits))


@pytest.mark.parametrize("name", CANONICAL)
def test_labels_index_like_numpy_and_nan_propagates(name):
    """A label in ``[-C, 0)`` names the class numpy indexing gives it, in every term of the loss
    (the ``1 - p_t`` terms once masked another class than ``log p_t``); a label outside
    ``[-C, C)`` and a NaN logit give a NaN loss, never a silent 0 (``power``/``cutoff``'s
    ``p_t >= tau`` mask once dropped them)."""
    logits, labels = random_logits(11, (16, 5))
    fn = losses.get_loss(name, **OTHER_HPARAMS[name])
    np.testing.assert_array_equal(fn(logits, labels - 5), fn(logits, labels))
    out_of_range = np.asarray(fn(logits, np.where(np.arange(16) % 2 == 0, 5, -6)))
    assert np.all(np.isnan(out_of_range)), out_of_range
    with_nan = logits.copy()
    with_nan[3, 1] = np.nan
    values = np.asarray(fn(with_nan, labels))
    assert np.isnan(values[3]) and np.all(np.isfinite(np.delete(values, 3))), values


def test_p_t_is_exp_of_log_softmax():
    logits, labels = random_logits(9, (10, 7))
    np.testing.assert_allclose(losses.p_t(logits, labels), np_parts(logits, labels)[3], rtol=1e-6)
    chex.assert_tree_all_finite(jax.grad(lambda x: losses.p_t(x, EXTREME_LABELS).sum())(EXTREME))


# --------------------------------------------------------------------------------------------------
# Properties (hypothesis): non-negative and finite, for any logits and in-domain hyperparameters.
# --------------------------------------------------------------------------------------------------

HPARAM_STRATEGIES = {
    "gamma": st.floats(0.0, 8.0),
    "tau": st.floats(0.0, 0.999),
    "q": st.floats(1e-3, 1.0),
    "alpha": st.floats(0.0, 10.0),
    "beta": st.floats(0.0, 10.0),
    "label_clamp": st.floats(1e-8, 0.5),
    "min_prob": st.floats(1e-10, 0.05),
    "epsilon": st.floats(-1.0, 10.0),
    "detach": st.booleans(),
}


@st.composite
def loss_cases(draw):
    name = draw(st.sampled_from(CANONICAL))
    hp = {k: draw(HPARAM_STRATEGIES[k]) for k in losses.loss_hparams(name)}
    batch = draw(st.integers(1, 6))
    classes = draw(st.integers(2, 12))
    logits = draw(hnp.arrays(np.float32, (batch, classes), elements=st.floats(-1e4, 1e4, width=32)))
    labels = draw(hnp.arrays(np.int32, (batch,), elements=st.integers(0, classes - 1)))
    return name, hp, logits, labels


@pytest.mark.slow
@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(loss_cases())
def test_property_non_negative_and_finite(case):
    name, hp, logits, labels = case
    fn = losses.get_loss(name, **hp)
    value, grad = jax.value_and_grad(lambda x: fn(x, labels).sum())(logits)
    per_example = np.asarray(fn(logits, labels))
    assert per_example.shape == labels.shape
    assert np.all(np.isfinite(per_example)) and np.isfinite(value)
    assert np.all(np.isfinite(grad))
    # Tiny negative values are float rounding of losses that are exactly 0 at p_t = 1.
    assert np.all(per_example >= -1e-5 * (1 + np.abs(per_example).max())), (name, hp)


# --------------------------------------------------------------------------------------------------
# Registry errors.
# --------------------------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    ("nope", {}, r"Unknown loss 'nope'; available: .*cross_entropy"),
    ("power", {"gamma": -0.5}, r"gamma=-0.5 .*gamma >= 0"),
    ("focal", {"gamma": -1.0}, r"gamma=-1.0 .*gamma >= 0"),
    ("power", {"gamma": math.nan}, r"gamma=nan .*gamma >= 0"),
    ("power", {"tau": 1.0}, r"tau=1.0 .*0 <= tau < 1"),
    ("power", {"tau": -0.1}, r"tau=-0.1 .*0 <= tau < 1"),
    ("cutoff", {"tau": 1.5}, r"tau=1.5 .*0 <= tau < 1"),
    ("gce", {"q": 0.0}, r"q=0.0 .*0 < q <= 1"),
    ("gce", {"q": 1.01}, r"q=1.01 .*0 < q <= 1"),
    ("sce", {"alpha": -1.0}, r"alpha=-1.0 .*alpha >= 0"),
    ("sce", {"beta": -2.0}, r"beta=-2.0 .*beta >= 0"),
    ("sce", {"label_clamp": 0.0}, r"label_clamp=0.0 .*0 < label_clamp < 1"),
    ("nce_rce", {"alpha": -0.1}, r"alpha=-0.1 .*alpha >= 0"),
    ("nce_mae", {"beta": -3.0}, r"beta=-3.0 .*beta >= 0"),
    ("anl_ce", {"min_prob": 1.0}, r"min_prob=1.0 .*0 < min_prob < 1"),
    ("anl_ce", {"alpha": -5.0}, r"alpha=-5.0 .*alpha >= 0"),
    ("poly1", {"epsilon": -2.0}, r"epsilon=-2.0 .*epsilon >= -1"),
    ("gce", {"gamma": 1.0}, r"'gce' does not take gamma; it takes: q"),
    ("ce", {"tau": 0.1}, r"'ce' does not take tau; it takes: no hyperparameters"),
    ("power", {"detach": "yes"}, r"detach='yes' must be True or False"),
    ("power", {"gamma": np.array([1.0, -1.0])}, r"gamma=array\(\[ 1., -1.\]\) .*gamma >= 0"),
]


@pytest.mark.parametrize("name,hp,message", BAD_ARGUMENTS)
def test_bad_arguments_raise_clear_errors(name, hp, message):
    with pytest.raises(ValueError, match=message):
        losses.get_loss(name, **hp)


def test_direct_call_checks_concrete_hparams():
    logits, labels = random_logits(10, (4, 3))
    with pytest.raises(ValueError, match=r"power: gamma=-1"):
        losses.power(logits, labels, gamma=-1)
    with pytest.raises(ValueError, match=r"logits must be a float array"):
        losses.cross_entropy(np.zeros((2, 3), np.int32), np.zeros(2, np.int32))


def test_gradient_weight_matches_loss_definitions():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(32, 5)) * 3, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 5, 32))
    pt = np.asarray(losses.p_t(logits, labels))
    np.testing.assert_allclose(
        losses.gradient_weight("power", logits, labels, gamma=2.0, tau=0.1),
        pt**2 * (pt >= 0.1), rtol=1e-5,
    )  # fmt: skip
    np.testing.assert_array_equal(
        losses.gradient_weight("cutoff", logits, labels, tau=0.2), (pt >= 0.2).astype(float)
    )
    np.testing.assert_array_equal(losses.gradient_weight("ce", logits, labels), np.ones(32))
    np.testing.assert_allclose(
        losses.gradient_weight("blurry", logits, labels), pt**2, rtol=1e-5
    )  # The loss's own default gamma.


@pytest.mark.parametrize(
    "name,hparams",
    [("power", {"gamma": 0.5, "tau": 0.1}), ("cutoff", {"tau": 0.2}), ("gce", {"q": 0.7})],
)
def test_gradient_weight_scales_cross_entropy_gradient(name, hparams):
    """The weight is what the loss's gradient is, per example, in units of cross-entropy's."""
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(16, 4)) * 2, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, 16))
    loss = losses.get_loss(name, **hparams)
    grad = jax.grad(lambda x: loss(x, labels).sum())(logits)
    grad_ce = jax.grad(lambda x: losses.cross_entropy(x, labels).sum())(logits)
    weight = losses.gradient_weight(name, logits, labels, **hparams)
    np.testing.assert_allclose(grad, weight[:, None] * grad_ce, rtol=2e-5, atol=1e-7)


def test_gradient_weight_keeps_nan_as_the_loss_does():
    """A NaN logit: power and cutoff keep the example (NaN loss), so their weight is not 0."""
    logits = jnp.asarray([[np.nan, 0.0, 0.0], [3.0, 0.0, 0.0]], jnp.float32)
    labels = jnp.asarray([0, 0])
    for name in ("power", "cutoff"):
        assert np.isnan(losses.get_loss(name, tau=0.5)(logits, labels)[0])
        weight = losses.gradient_weight(name, logits, labels, tau=0.5)
        assert weight[0] != 0.0  # NaN (power) or 1 (cutoff).


def test_the_registry_describes_every_loss_once():
    specs = {spec.name: spec for spec in losses.registered_losses()}
    for spec in specs.values():  # What a new loss would get: non-default values it accepts.
        for name, value in other_values(spec).items():
            assert value != spec.hparams[name]
            losses.get_loss(spec.name, **{name: value})
        assert set(other_values(spec)) == {
            k for k, v in spec.hparams.items() if not isinstance(v, bool)
        }, spec.name
    assert {losses.canonical_name(a) for a in ("ce", "blurry", "piecewise_zero")} == {
        "cross_entropy",
        "power",
        "cutoff",
    }
    assert [n for n, s in specs.items() if s.delayed] == ["power", "cutoff"]
    assert {n: s.rampable for n, s in specs.items() if s.rampable} == {
        "focal": ("gamma",), "power": ("gamma", "tau"), "cutoff": ("tau",)
    }  # fmt: skip
    for spec in specs.values():  # At 0, a rampable hyperparameter makes the loss cross-entropy.
        logits, labels = jnp.array([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]]), jnp.array([0, 2])
        zero = dict.fromkeys(spec.rampable, 0.0)
        if zero:
            np.testing.assert_allclose(
                losses.get_loss(spec.name, **zero)(logits, labels),
                losses.cross_entropy(logits, labels), rtol=1e-6, err_msg=spec.name,
            )  # fmt: skip
    assert specs["gce"].summary.startswith("Generalised cross-entropy")
    assert losses.loss_hparams("power") == {"gamma": 2.0, "tau": 0.0, "detach": True}


def test_register_loss_makes_a_new_loss_available_and_checks_it(monkeypatch):
    from robust_losses_jax.commands import cli

    monkeypatch.setattr(losses, "_REGISTRY", dict(losses._REGISTRY))
    monkeypatch.setattr(losses, "_ALIASES", dict(losses._ALIASES))

    def squared(logits, labels, *, strength=1.0):
        """Squared error on p_t: ``strength * (1 - p_t)**2``."""
        return strength * (1.0 - losses.p_t(logits, labels)) ** 2

    with pytest.raises(ValueError, match=r"strength need a domain"):
        losses.register_loss(losses.LossSpec("squared", squared))
    domain = (0.0, math.inf, False, False, "strength > 0")
    spec = losses.LossSpec("squared", squared, aliases=("sq",), domains={"strength": domain})
    losses.register_loss(spec)
    assert "squared" in losses.available_losses() and losses.loss_spec("sq") is spec
    assert "strength" in cli.loss_flags()
    logits = jnp.array([[2.0, 0.0]])
    want = 2.0 * (1 - jax.nn.softmax(logits)[0, 0]) ** 2
    got = losses.get_loss("sq", strength=2.0)(logits, jnp.array([0]))
    np.testing.assert_allclose(got, [want], rtol=1e-6)
    with pytest.raises(
        ValueError, match=r"strength=-1.0 is outside its domain; allowed: strength > 0"
    ):
        losses.get_loss("squared", strength=-1.0)
    with pytest.raises(ValueError, match=r"a loss named 'ce' is already registered"):
        losses.register_loss(losses.LossSpec("ce", squared, domains=spec.domains))
    with pytest.raises(ValueError, match=r"rampable gamma is not among its numeric"):
        losses.register_loss(losses.LossSpec("sq2", squared, domains=spec.domains,
                                             rampable=("gamma",)))  # fmt: skip


def test_docs_losses_table_is_the_registrys():
    text = (Path(__file__).resolve().parent.parent / "docs" / "losses.md").read_text()
    table = text.split("<!-- LOSSES -->\n")[1].split("<!-- /LOSSES -->")[0]
    assert table == losses.losses_markdown(), "regenerate it: losses.losses_markdown()"
