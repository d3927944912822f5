"""The per-device train and eval steps, and the train state and optimiser they update.

The train step is written once, as a pure per-device function
``train_step(state, batch, loss_hparams) -> (state, metrics)`` that averages gradients and
BatchNorm statistics over the ``'data'`` axis; :mod:`training.parallel` runs it over the devices
(host-streamed batches) and :mod:`training.programs` inside compiled epochs.

Loss hyperparameters (``gamma``, ``tau``, ...) arrive as traced values and the delay/ramp
schedule is evaluated on the traced ``state.step`` (:func:`schedules.scheduled_loss`), so
switching from cross-entropy to the robust loss compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from robust_losses_jax import config as config_lib
from robust_losses_jax import detection, input_pipeline, losses, schedules
from robust_losses_jax.training.parallel import AXIS

Array = jax.Array
LOW_WEIGHT = 0.01  # An example counts as "switched off" when its gradient weight is below this.


class TrainState(train_state.TrainState):
    """Flax TrainState with BatchNorm statistics (an empty dict for models without BatchNorm)."""

    batch_stats: Any = None


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step (hashable; changing one recompiles).

    Attributes:
      loss_name: a name from :func:`losses.available_losses`.
      delay_steps: steps of cross-entropy before the robust loss.
      ramp_steps: steps over which the loss's rampable hyperparameters (``LossSpec.rampable``)
        rise from 0 after the delay.
      steps_per_epoch: to turn the step into the epoch (augmentation keys).
      augment: CIFAR augmentation (random crop, flip).
      l1_weight: L1 penalty on the parameters (ANL's regulariser), 0 for none.
      detach: power's weight detached (a Python bool: it changes the program).
    """

    loss_name: str = "cross_entropy"
    delay_steps: int = 0
    ramp_steps: int = 0
    steps_per_epoch: int = 1
    augment: bool = False
    l1_weight: float = 0.0
    detach: bool = True


# --------------------------------------------------------------------------------------------------
# Optimisers and state.
# --------------------------------------------------------------------------------------------------

OPTIMIZERS, LR_SCHEDULES = config_lib.OPTIMIZERS, config_lib.LR_SCHEDULES


def make_optimizer(
    name: str,
    learning_rate: float,
    *,
    total_steps: int,
    schedule: str = "constant",
    warmup_steps: int = 0,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    step_boundaries: tuple[float, ...] = (0.5, 0.75),
    step_factor: float = 0.1,
) -> optax.GradientTransformation:
    """An optax optimiser with a learning-rate schedule.

    Args:
      name: ``sgd`` (momentum, optional Nesterov), ``adam`` or ``adamw``.
      learning_rate: peak learning rate.
      total_steps: length of training, for the cosine and step schedules.
      schedule: ``constant``, ``cosine`` (to 0) or ``step`` (times ``step_factor`` at each
        fraction of training in ``step_boundaries``).
      warmup_steps: linear warm-up from 0.
      weight_decay: decoupled for ``adamw``; added to the gradient (L2) for ``sgd``/``adam``.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}.")
    if schedule not in LR_SCHEDULES:
        raise ValueError(
            f"Unknown lr schedule {schedule!r}; choose from {', '.join(LR_SCHEDULES)}."
        )
    if not learning_rate > 0:
        raise ValueError(f"learning rate {learning_rate!r} must be > 0.")
    decay_steps = max(total_steps - warmup_steps, 1)
    if schedule == "cosine":
        lr = optax.cosine_decay_schedule(learning_rate, decay_steps)
    elif schedule == "step":
        boundaries = {int(b * total_steps) - warmup_steps: step_factor for b in step_boundaries}
        lr = optax.piecewise_constant_schedule(learning_rate, boundaries)
    else:
        lr = optax.constant_schedule(learning_rate)
    if warmup_steps:
        warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
        lr = optax.join_schedules([warmup, lr], [warmup_steps])
    if name == "adamw":
        return optax.adamw(lr, weight_decay=weight_decay)
    base = optax.sgd(lr, momentum=momentum, nesterov=nesterov) if name == "sgd" else optax.adam(lr)
    if weight_decay:
        return optax.chain(optax.add_decayed_weights(weight_decay), base)
    return base


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_variables(model: nn.Module, key: Array, image_shape: tuple[int, ...]) -> dict:
    # One compiled program: op-by-op initialisation compiles every op on its own (4 s for the
    # small CNN on CPU against 0.6 s), and the same model hashes to the same program.
    return model.init({"params": key, "dropout": key}, jnp.zeros((1, *image_shape)), train=False)


def create_train_state(
    key: Array, model: nn.Module, image_shape: tuple[int, ...], tx: optax.GradientTransformation
) -> TrainState:
    """Initialise the model on one example of ``image_shape`` (``[H, W, C]``)."""
    try:
        hash(model)
    except TypeError:  # A field such as a list: initialise op by op (same values, slower).
        variables = _init_variables.__wrapped__(model, key, tuple(image_shape))
    else:
        variables = _init_variables(model, key, tuple(image_shape))
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
    )
    # An int32 array, not Python's 0, so the first step compiles the same program as the rest.
    return state.replace(step=jnp.zeros((), jnp.int32))


# --------------------------------------------------------------------------------------------------
# The per-device train step.
# --------------------------------------------------------------------------------------------------


def _scheduled_loss(config: StepConfig, step: Array, hparams: Mapping[str, Array]):
    """``(loss_fn, weight_fn)`` at ``step`` (:func:`schedules.scheduled_loss`)."""
    return schedules.scheduled_loss(
        config.loss_name, step, hparams, delay_steps=config.delay_steps,
        ramp_steps=config.ramp_steps, detach=config.detach,
    )  # fmt: skip


def _all_finite(grads: Any, per_example: Array, axis_name: str) -> Array:
    """int32 1 when every gradient and per-example loss is finite on every device, else 0."""
    finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    finite = finite & jnp.all(jnp.isfinite(per_example))
    return jax.lax.pmin(finite.astype(jnp.int32), axis_name)


def train_step(
    state: TrainState,
    batch: Mapping[str, Array],
    loss_hparams: Mapping[str, Array],
    *,
    config: StepConfig,
    key: Array,
    mean: Array,
    std: Array,
    axis_name: str = AXIS,
) -> tuple[TrainState, dict[str, Array]]:
    """One step on one device's part of the batch; pure, collective over ``axis_name``.

    Args:
      state: replicated train state.
      batch: this device's ``image`` uint8 ``[b, H, W, C]``, ``label`` int ``[b]`` (the labels
        trained on), ``index`` int ``[b]``.
      loss_hparams: the robust loss's target hyperparameters (traced scalars).
      config: static settings.
      key: base PRNG key of the run (augmentation, dropout).
      mean, std: per-channel normalisation ``[C]``.

    Returns:
      The new state and summed metrics over all devices: ``loss_sum``, ``correct`` (argmax ==
      label trained on), ``low_weight`` (gradient weight below 0.01), ``count``, and ``finite``
      (1 when loss and gradients were finite; the update is then applied, else skipped); and,
      gathered over the devices, ``margin`` ``[B]`` (label logit minus the largest other, for
      AUM) and ``index`` ``[B]``.
    """
    epoch = state.step // config.steps_per_epoch
    images = input_pipeline.preprocess(
        batch["image"], batch["index"], key=jax.random.fold_in(key, 1), epoch=epoch,
        mean=mean, std=std, augment=config.augment,
    )  # fmt: skip
    # One dropout key per step for all devices; each device draws the rows of the global batch
    # it holds (offset), so masks do not depend on the device count. (The trailing fold_in(0)
    # keeps one-device runs identical to earlier versions, which folded in the device index.)
    dropout_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 2), state.step), 0)
    example_offset = jax.lax.axis_index(axis_name) * batch["label"].shape[0]
    loss_fn, weight_fn = _scheduled_loss(config, state.step, loss_hparams)
    labels = batch["label"]
    has_bn = bool(jax.tree.leaves(state.batch_stats))

    def objective(params):
        variables = {"params": params}
        if has_bn:
            variables["batch_stats"] = state.batch_stats
            logits, updates = state.apply_fn(
                variables, images, train=True, rngs={"dropout": dropout_key},
                mutable=["batch_stats"], example_offset=example_offset,
            )  # fmt: skip
        else:
            logits = state.apply_fn(
                variables, images, train=True, rngs={"dropout": dropout_key},
                example_offset=example_offset,
            )  # fmt: skip
            updates = {}
        per_example = loss_fn(logits, labels)
        loss = jnp.mean(per_example)
        if config.l1_weight:
            loss = loss + config.l1_weight * sum(jnp.abs(p).sum() for p in jax.tree.leaves(params))
        return loss, (logits, per_example, updates)

    grads, (logits, per_example, updates) = jax.grad(objective, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, axis_name)
    finite = _all_finite(grads, per_example, axis_name)
    new_state = state.apply_gradients(grads=grads)
    if has_bn:
        new_state = new_state.replace(batch_stats=updates["batch_stats"])  # pmean'd by BatchNorm.
    # A non-finite step is not applied: the run stops on the host with the last good state.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite > 0, new, old), new_state, state)

    weight = weight_fn(logits, labels)
    metrics = {
        "loss_sum": jnp.sum(per_example),
        "correct": jnp.sum(jnp.argmax(logits, -1) == labels),
        "low_weight": jnp.sum(weight < LOW_WEIGHT),
        "count": jnp.asarray(labels.shape[0]),
    }
    metrics = jax.lax.psum(metrics, axis_name)
    metrics["finite"] = finite
    # Per-example margins of the logits just computed, for AUM (no extra forward pass): the whole
    # global batch, gathered in device order, with the examples' dataset indices.
    metrics["margin"] = jax.lax.all_gather(detection.margins(logits, labels), axis_name, tiled=True)
    metrics["index"] = jax.lax.all_gather(batch["index"], axis_name, tiled=True)
    return new_state, metrics


def eval_step(
    state: TrainState,
    batch: Mapping[str, Array],
    loss_hparams: Mapping[str, Array],
    *,
    config: StepConfig,
    mean: Array,
    std: Array,
) -> dict[str, Array]:
    """Per-example outputs on one device's batch (no collectives, no augmentation).

    Returns ``logits [b, C]``, ``p_t``, ``margin`` (given-label logit minus the largest other),
    ``pred``, ``weight`` (the robust loss's gradient weight at the current step), ``loss``
    (the scheduled loss), each ``[b]``, for the labels in ``batch['label']``.
    """
    images = input_pipeline.normalize(batch["image"], mean, std)
    variables = {"params": state.params}
    if jax.tree.leaves(state.batch_stats):
        variables["batch_stats"] = state.batch_stats
    logits = state.apply_fn(variables, images, train=False).astype(jnp.float32)
    labels = batch["label"]
    loss_fn, weight_fn = _scheduled_loss(config, state.step, loss_hparams)
    return {
        "logits": logits,
        "p_t": losses.p_t(logits, labels),
        "margin": detection.margins(logits, labels),
        "pred": jnp.argmax(logits, -1).astype(jnp.int32),
        "weight": weight_fn(logits, labels),
        "loss": loss_fn(logits, labels),
    }
