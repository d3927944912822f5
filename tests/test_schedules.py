"""Tests for robust_losses_jax.schedules: delay, ramp, scheduled loss under jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_losses_jax import losses, schedules


def _logits(seed=0, shape=(32, 10)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32) * 3, rng.integers(0, shape[-1], shape[:-1])


def test_delay_switches_at_the_delay_step():
    steps = jnp.arange(10)
    np.testing.assert_array_equal(schedules.delay_active(steps, 4), np.arange(10) >= 4)
    assert bool(schedules.delay_active(0, 0))


def test_linear_ramp_values():
    steps = jnp.array([0, 5, 10, 15, 20, 25, 100])
    got = schedules.linear_ramp(steps, start_step=10, ramp_steps=10, end_value=2.0)
    np.testing.assert_allclose(got, [0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0])
    jump = schedules.linear_ramp(steps, start_step=10, ramp_steps=0, end_value=0.3)
    np.testing.assert_allclose(jump, [0, 0, 0.3, 0.3, 0.3, 0.3, 0.3])


def test_schedule_without_ramp_keeps_targets():
    schedule = schedules.loss_schedule(delay_steps=3, targets={"gamma": 2.0, "tau": 0.1})
    early, late = schedule(1), schedule(3)
    assert not bool(early["robust"]) and bool(late["robust"])
    assert float(early["gamma"]) == float(late["gamma"]) == 2.0
    np.testing.assert_allclose(late["tau"], 0.1)


@pytest.mark.parametrize(
    "name,targets",
    [
        ("power", {"gamma": 2.0}),
        ("cutoff", {"tau": 0.2}),
        ("gce", {"q": 0.5}),
        ("focal", {"gamma": 1.0}),
    ],
)
@pytest.mark.slow
def test_scheduled_loss_is_ce_during_delay_then_robust(name, targets):
    delay = 5

    def fn(logits, labels, step):
        loss_fn, _ = schedules.scheduled_loss(name, step, targets, delay_steps=delay)
        return loss_fn(logits, labels)

    logits, labels = _logits()
    ce = losses.cross_entropy(logits, labels)
    robust = losses.get_loss(name, **targets)(logits, labels)
    for step in (0, delay - 1):
        np.testing.assert_array_equal(fn(logits, labels, step), ce)
        grad = jax.grad(lambda x, s=step: fn(x, labels, s).sum())(logits)
        grad_ce = jax.grad(lambda x: losses.cross_entropy(x, labels).sum())(logits)
        np.testing.assert_array_equal(grad, grad_ce)
    for step in (delay, delay + 100):
        np.testing.assert_allclose(fn(logits, labels, step), robust, rtol=1e-6)
    assert not np.allclose(ce, robust)


def test_ramp_moves_power_from_ce_to_target():
    def fn(logits, labels, step):
        loss_fn, _ = schedules.scheduled_loss(
            "power", step, {"gamma": 2.0}, delay_steps=2, ramp_steps=4
        )
        return loss_fn(logits, labels)

    logits, labels = _logits(1)
    ce = losses.cross_entropy(logits, labels)
    np.testing.assert_array_equal(fn(logits, labels, 2), ce)  # Ramp starts at gamma = 0.
    np.testing.assert_allclose(
        fn(logits, labels, 4), losses.power(logits, labels, gamma=1.0), rtol=1e-6
    )
    np.testing.assert_allclose(
        fn(logits, labels, 9), losses.power(logits, labels, gamma=2.0), rtol=1e-6
    )


def test_step_is_traced_and_compiles_once():
    def fn(logits, labels, step):
        loss_fn, _ = schedules.scheduled_loss(
            "cutoff", step, {"tau": 0.3}, delay_steps=3, ramp_steps=3
        )
        return loss_fn(logits, labels)

    logits, labels = _logits(2)
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def mean_loss(logits, step):
        return fn(logits, labels, step).mean()

    values = [float(mean_loss(logits, jnp.int32(step))) for step in range(8)]
    assert values[0] == values[2] > values[-1]  # CE during the delay, then fewer kept examples.
    assert mean_loss._cache_size() == 1


@pytest.mark.parametrize(
    "kwargs,message",
    [({"delay_steps": -1}, r"delay_steps=-1 must be an integer >= 0"),
     ({"delay_steps": 1.5}, r"delay_steps=1.5 must be an integer >= 0"),
     ({"ramp_steps": -2}, r"ramp_steps=-2 must be an integer >= 0")],
)  # fmt: skip
def test_bad_schedule_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        schedules.loss_schedule(**kwargs)


def test_scheduled_weight_is_one_during_delay_then_the_losses():
    logits, labels = _logits(3)
    targets = {"gamma": 2.0, "tau": 0.1}
    for step, want in ((0, np.ones(32)), (4, losses.gradient_weight("power", logits, labels,
                                                                     **targets))):  # fmt: skip
        _, weight_fn = schedules.scheduled_loss("power", step, targets, delay_steps=4)
        np.testing.assert_array_equal(weight_fn(logits, labels), want)


def test_scheduled_loss_ramps_only_the_rampable():
    """gce's q is not rampable: with a ramp it applies as it is, from the end of the delay."""
    logits, labels = _logits(4)
    loss_fn, _ = schedules.scheduled_loss("gce", 3, {"q": 0.5}, delay_steps=3, ramp_steps=10)
    np.testing.assert_allclose(
        loss_fn(logits, labels), losses.gce(logits, labels, q=0.5), rtol=1e-6
    )


def test_a_ramp_raises_the_losses_own_rampable_hyperparameters():
    """focal's gamma is rampable: halfway through the ramp it trains with half its gamma;
    at the delay's end (the ramp's start) it is cross-entropy."""
    logits, labels = _logits(5)
    loss_fn, _ = schedules.scheduled_loss("focal", 7, {"gamma": 2.0}, delay_steps=2, ramp_steps=10)
    np.testing.assert_allclose(
        loss_fn(logits, labels), losses.focal(logits, labels, gamma=1.0), rtol=1e-6
    )
    at_start, _ = schedules.scheduled_loss("focal", 2, {"gamma": 2.0}, delay_steps=2, ramp_steps=10)
    np.testing.assert_allclose(
        at_start(logits, labels), losses.cross_entropy(logits, labels), rtol=1e-6
    )
