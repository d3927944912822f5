"""Schedules of the loss over training, as pure functions of the step.

The paper's ``delay``: plain cross-entropy for the first ``delay`` epochs, then the robust loss.
From random weights, power (gamma=2) and cutoff (tau >= 0.1) fall into a degenerate solution
without it (``../shared/README.md``, reference run). An optional linear ``ramp`` then raises
the loss's rampable hyperparameters (``LossSpec.rampable``: power's ``gamma``, cutoff's
``tau``, ...) from 0, where the loss *is* cross-entropy, to their targets.

Everything here is traceable: the step is a traced value inside the jitted train step, and the loss
hyperparameters it produces are traced too, so switching from CE to the robust loss compiles once.
Durations are in steps; ``training.loop`` turns epochs into steps once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from robust_losses_jax import losses

Array = jax.Array
ScheduleFn = Callable[[jax.typing.ArrayLike], dict[str, Array]]


def delay_active(step: jax.typing.ArrayLike, delay_steps: int) -> Array:
    """True once the robust loss is on: ``step >= delay_steps``; bool of ``step``'s shape."""
    return jnp.asarray(step) >= delay_steps


def linear_ramp(
    step: jax.typing.ArrayLike, *, start_step: int, ramp_steps: int, end_value: float
) -> Array:
    """0 up to ``start_step``, then linearly up to ``end_value`` at ``start_step + ramp_steps``.

    ``ramp_steps == 0`` jumps to ``end_value`` at ``start_step``. float32 of ``step``'s shape.
    """
    step = jnp.asarray(step, jnp.float32)
    if ramp_steps == 0:
        fraction = (step >= start_step).astype(jnp.float32)
    else:
        fraction = jnp.clip((step - start_step) / ramp_steps, 0.0, 1.0)
    return fraction * jnp.float32(end_value)


def loss_schedule(
    *, delay_steps: int = 0, ramp_steps: int = 0, targets: Mapping[str, float] | None = None
) -> ScheduleFn:
    """Schedule ``step -> {'robust': bool, **hparams}`` for the delay and the optional ramp.

    Args:
      delay_steps: steps of plain cross-entropy before the robust loss is switched on.
      ramp_steps: steps over which each ramped hyperparameter rises from 0 to its target, starting
        when the delay ends; 0 means no ramp.
      targets: final values of the ramped hyperparameters (a loss's ``LossSpec.rampable``: at 0
        it is cross-entropy). Without a ramp they are returned unchanged at every step.

    Returns:
      A pure function of the (possibly traced) step.
    """
    targets = dict(targets or {})
    if not isinstance(delay_steps, int) or delay_steps < 0:
        raise ValueError(f"delay_steps={delay_steps!r} must be an integer >= 0.")
    if not isinstance(ramp_steps, int) or ramp_steps < 0:
        raise ValueError(f"ramp_steps={ramp_steps!r} must be an integer >= 0.")

    def schedule(step: jax.typing.ArrayLike) -> dict[str, Array]:
        hparams = {"robust": delay_active(step, delay_steps)}
        for name, target in targets.items():
            if ramp_steps:
                hparams[name] = linear_ramp(
                    step, start_step=delay_steps, ramp_steps=ramp_steps, end_value=target
                )
            else:
                hparams[name] = jnp.asarray(target, jnp.float32)
        return hparams

    return schedule


def scheduled_loss(
    loss_name: str,
    step: jax.typing.ArrayLike,
    hparams: Mapping[str, jax.typing.ArrayLike],
    *,
    delay_steps: int = 0,
    ramp_steps: int = 0,
    detach: bool = True,
) -> tuple[Callable[..., Array], Callable[..., Array]]:
    """The loss and its gradient weight at ``step``: cross-entropy during the delay, then
    ``loss_name`` with its scheduled hyperparameters.

    Args:
      loss_name: a name from :func:`losses.available_losses`.
      step: the (traced) train step.
      hparams: the loss's target hyperparameters (traced or concrete); its rampable ones
        (``LossSpec.rampable``) rise from 0 over ``ramp_steps`` after the delay, the others
        apply as they are.
      delay_steps, ramp_steps: as :func:`loss_schedule`.
      detach: power's weight detached (a Python bool: it changes the program).

    Returns:
      ``(loss_fn, weight_fn)``, each ``(logits [..., C], labels [...]) -> [...]`` float32:
      the per-example loss and :func:`losses.gradient_weight` (1 during the delay).
    """
    targets = dict(hparams)
    rampable = losses.loss_spec(loss_name).rampable
    ramped = {k: targets[k] for k in rampable if k in targets}
    schedule = loss_schedule(
        delay_steps=delay_steps, ramp_steps=ramp_steps if ramped else 0, targets=ramped
    )
    now = schedule(step)
    robust = now.pop("robust")
    targets.update(now)
    extra = {"detach": detach} if losses.canonical_name(loss_name) == "power" else {}
    robust_fn = losses.get_loss(loss_name, **extra)

    def loss_fn(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> Array:
        # Both branches are finite, so `where` keeps the gradient of the selected one only.
        return jnp.where(
            robust, robust_fn(logits, labels, **targets), losses.cross_entropy(logits, labels)
        )

    def weight_fn(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> Array:
        return jnp.where(robust, losses.gradient_weight(loss_name, logits, labels, **targets), 1.0)

    return loss_fn, weight_fn
