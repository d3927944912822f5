"""Small models without BatchNorm: the paper's MNIST CNN and an MLP.

Neither has a ``batch_stats`` collection. ``dtype`` is the compute dtype; parameters stay float32
and the last layer runs in float32, so the logits are float32 whatever ``dtype`` and the input
dtype are. With ``train=True`` and a nonzero dropout rate, ``apply`` needs a ``'dropout'`` rng.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from robust_losses_jax.models import layers


class SmallCNN(nn.Module):
    """The Keras MNIST example CNN. ``[B, H, W, C] -> [B, num_classes]`` float32.

    conv 3x3x32, ReLU, conv 3x3x64, ReLU (both ``'VALID'``), max-pool 2x2, dropout, flatten,
    dense 128, ReLU, dropout, dense ``num_classes``. 1,199,882 parameters on 28x28x1 inputs with 10
    classes (the dense layer's size depends on ``H`` and ``W``).
    """

    num_classes: int
    dtype: Any = jnp.float32
    conv_dropout_rate: float = 0.25
    dense_dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, example_offset: jax.Array | int = 0):
        """``example_offset``: the index of ``x[0]`` in the global batch (for dropout masks)."""
        x = jnp.asarray(x, self.dtype)
        x = nn.relu(layers.Conv(32, (3, 3), dtype=self.dtype, name="Conv_0")(x))
        x = nn.relu(layers.Conv(64, (3, 3), dtype=self.dtype, name="Conv_1")(x))
        x = layers.max_pool_2x2(x)
        x = layers.Dropout(self.conv_dropout_rate)(
            x, deterministic=not train, row_offset=example_offset
        )
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(128, dtype=self.dtype)(x))
        x = layers.Dropout(self.dense_dropout_rate)(
            x, deterministic=not train, row_offset=example_offset
        )
        # The head runs in float32: bfloat16 logits would quantize p_t (3 significant digits).
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="head")(x)


class MLP(nn.Module):
    """Flatten, then ``Dense -> ReLU [-> dropout]`` per hidden size, then a dense head.

    ``[B, ...] -> [B, num_classes]`` float32.
    """

    num_classes: int
    hidden_sizes: Sequence[int] = (512, 256)
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, example_offset: jax.Array | int = 0):
        """``example_offset``: the index of ``x[0]`` in the global batch (for dropout masks)."""
        x = jnp.asarray(x, self.dtype).reshape(x.shape[0], -1)
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size, dtype=self.dtype)(x))
            x = layers.Dropout(self.dropout_rate)(
                x, deterministic=not train, row_offset=example_offset
            )
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="head")(x)
