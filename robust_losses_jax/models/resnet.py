"""ResNets (He et al. 2016) in flax.linen, after flax's ``examples/imagenet/models.py``.

The default ``stem="cifar"`` is the standard CIFAR ResNet (a 3x3 stride-1 conv and no max-pool, as
in kuangliu/pytorch-cifar), for 32x32 and 28x28 inputs; ``stem="imagenet"`` is the original's 7x7
stride-2 conv and 3x3 stride-2 max-pool. Padding is symmetric (``k // 2``), as in PyTorch, rather
than flax's ``'SAME'``, which pads stride-2 convs on one side only.

``dtype`` is the compute dtype; parameters and BatchNorm statistics stay float32 and the classifier
head runs in float32, so the logits are float32 whatever ``dtype`` and the input dtype are.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from robust_losses_jax.models import layers

ModuleDef = Any

STEMS = ("cifar", "imagenet")


class ResNetBlock(nn.Module):
    """Basic block: two 3x3 convs. ``[B, H, W, C] -> [B, H / s, W / s, filters]``."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[jax.Array], jax.Array]
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides, padding=1)(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3), padding=1)(y)
        # Zero-init the last scale so that each block starts as the identity (Goyal et al. 2017).
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
    """Bottleneck block: 1x1, 3x3, 1x1 convs. ``[B, H, W, C] -> [B, H / s, W / s, 4 * filters]``."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[jax.Array], jax.Array]
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x
        y = self.conv(self.filters, (1, 1))(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3), self.strides, padding=1)(y)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """ResNet classifier. ``__call__(x [B, H, W, C], *, train) -> logits [B, num_classes]`` float32.

    Attributes:
      stage_sizes: blocks per stage; stage ``i`` has ``num_filters * 2**i`` filters and, for
        ``i > 0``, halves the spatial size.
      block_cls: ``ResNetBlock`` or ``BottleneckResNetBlock``.
      num_classes: number of logits.
      num_filters: filters of the stem and the first stage.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      stem: ``"cifar"`` (3x3 stride-1 conv) or ``"imagenet"`` (7x7 stride-2 conv and 3x3
        stride-2 max-pool: the stages see a 4x smaller image).
      bn_axis_name: BatchNorm's ``axis_name``. Under ``jax.pmap(axis_name=...)`` or
        ``jax.shard_map`` over that mesh axis, the batch statistics are averaged across devices;
        ``None`` for single-device (or vmapped) use, where the axis would be unbound.
      act: activation.

    With ``train=True`` BatchNorm uses batch statistics and updates its running averages in the
    ``batch_stats`` collection, so ``apply`` needs ``mutable=["batch_stats"]``; with
    ``train=False`` it uses the running averages.
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int
    num_filters: int = 64
    dtype: Any = jnp.float32
    stem: str = "cifar"
    bn_axis_name: str | None = None
    act: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, example_offset: jax.Array | int = 0):
        """``example_offset`` is accepted for a uniform signature (no dropout here)."""
        del example_offset
        if self.stem not in STEMS:
            raise ValueError(f"Unknown stem {self.stem!r}; available: {', '.join(STEMS)}.")
        # The loop-safe convolution: ResNets train inside lax.scan epochs (see layers).
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype,
            conv_general_dilated=layers.conv_general_dilated,
        )  # fmt: skip
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            axis_name=self.bn_axis_name,
        )
        x = jnp.asarray(x, self.dtype)
        if self.stem == "cifar":
            x = conv(self.num_filters, (3, 3), padding=1, name="conv_init")(x)
        else:
            x = conv(self.num_filters, (7, 7), (2, 2), padding=3, name="conv_init")(x)
        x = norm(name="bn_init")(x)
        x = self.act(x)
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(
                    self.num_filters * 2**i, conv=conv, norm=norm, act=self.act, strides=strides
                )(x)
        # Pool and classify in float32: bfloat16 logits would quantize p_t (3 significant digits).
        x = jnp.mean(jnp.asarray(x, jnp.float32), axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="head")(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=ResNetBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=ResNetBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckResNetBlock)

# For tests: two stages, so the stride-2 block and its projection shortcut are exercised.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1), block_cls=ResNetBlock, num_filters=8)
