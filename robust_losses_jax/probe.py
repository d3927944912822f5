"""A probe on feature vectors: a one-hidden-layer MLP, trained with any of the project's losses.

For features (embeddings from a pretrained model, tabular columns) the image engine's
machinery (device-resident uint8 images, checkpoints, multi-device steps) has nothing to do: a
probe trains in seconds. Each epoch is one jitted ``lax.scan`` over shuffled minibatches;
cross-entropy runs for the loss's delay, then the loss itself (no ramp).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from robust_losses_jax import config as config_lib
from robust_losses_jax import losses
from robust_losses_jax.training.loop import NonFiniteError
from robust_losses_jax.training.step import make_optimizer

PROBE_MODELS = ("mlp",)
HIDDEN_UNITS = 256  # The mlp probe's one hidden layer.


class Probe(nn.Module):
    """Logits ``[B, C]`` of features ``[B, D]``: one ReLU hidden layer of :data:`HIDDEN_UNITS`."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(HIDDEN_UNITS)(x))
        return nn.Dense(self.num_classes)(x)


def standardizer(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std ``[D]`` of the training features (std floored at 1e-6)."""
    return features.mean(axis=0), np.maximum(features.std(axis=0), 1e-6)


def probe_for(cfg: config_lib.Config, num_classes: int) -> Probe:
    if cfg.model not in PROBE_MODELS:
        raise ValueError(
            f"--model={cfg.model}: features train a probe; choose from {', '.join(PROBE_MODELS)}."
        )
    return Probe(num_classes)


def train_probe(
    cfg: config_lib.Config, features: np.ndarray, labels: np.ndarray, num_classes: int
) -> Any:
    """The probe's parameters after ``cfg.epochs`` of ``cfg.loss`` (after its delay of
    cross-entropy) on standardised ``features`` ``[N, D]`` with ``labels`` ``[N]``.

    Minibatches of ``min(cfg.batch_size, N)`` (a last partial one dropped), shuffled from
    ``cfg.seed``; ``cfg.optimizer``/``lr``/``weight_decay``. Raises :class:`NonFiniteError`
    when an epoch's loss is not finite.
    """
    model = probe_for(cfg, num_classes)
    batch = min(cfg.batch_size, len(labels))
    steps = len(labels) // batch
    init_key, order_key = jax.random.split(jax.random.key(cfg.seed))
    params = model.init(init_key, jnp.zeros((1, features.shape[1])))["params"]
    optimizer = make_optimizer(
        cfg.optimizer, cfg.lr, total_steps=cfg.epochs * steps, schedule=cfg.lr_schedule,
        weight_decay=cfg.weight_decay, momentum=cfg.momentum, nesterov=cfg.nesterov,
    )  # fmt: skip
    opt_state = optimizer.init(params)
    x, y = jnp.asarray(features), jnp.asarray(labels)
    robust = losses.get_loss(cfg.loss, **cfg.loss_hparams)
    epochs = {"ce": _epoch_fn(model, optimizer, losses.cross_entropy, steps, batch),
              "robust": _epoch_fn(model, optimizer, robust, steps, batch)}  # fmt: skip
    delay = min(cfg.resolved_delay_epochs, cfg.epochs)
    for epoch in range(cfg.epochs):
        run = epochs["ce" if epoch < delay else "robust"]
        params, opt_state, loss = run(params, opt_state, x, y, jax.random.fold_in(order_key, epoch))
        if not np.isfinite(float(loss)):
            raise NonFiniteError(f"the probe's loss is {float(loss)} in epoch {epoch + 1}.")
    return params


def _epoch_fn(model: Probe, optimizer: optax.GradientTransformation, loss_fn, steps, batch):
    """``(params, opt_state, x, y, key) -> (params, opt_state, mean loss)``: one epoch, jitted."""

    @jax.jit
    def epoch(params, opt_state, x, y, key):
        def step(carry, rows):
            params, opt_state = carry

            def mean_loss(p):
                return loss_fn(model.apply({"params": p}, x[rows]), y[rows]).mean()

            loss, grads = jax.value_and_grad(mean_loss)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        order = jax.random.permutation(key, len(y))[: steps * batch].reshape(steps, batch)
        (params, opt_state), step_losses = jax.lax.scan(step, (params, opt_state), order)
        return params, opt_state, step_losses.mean()

    return epoch


def probe_logits(cfg: config_lib.Config, params: Any, features: np.ndarray, num_classes: int):
    """float32 ``[N, C]``: the probe's logits on standardised ``features``."""
    model = probe_for(cfg, num_classes)
    return np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(features)))
