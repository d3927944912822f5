"""Classifiers, looked up by name with ``get_model``.

Every model is a flax.linen module called as ``model.apply(variables, x, train=...)`` with images
``x`` ``[B, H, W, C]`` of any float dtype, and returns float32 logits ``[B, num_classes]``.

Only the ResNets have BatchNorm, and so a ``batch_stats`` collection (``has_batch_norm``); the train
loop should read ``variables.get("batch_stats", {})`` and pass ``mutable=["batch_stats"]`` only when
it is non-empty. ``SmallCNN`` (and ``MLP`` with ``dropout_rate > 0``) need a ``'dropout'`` rng when
``train=True``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from robust_losses_jax.models.resnet import (
    BottleneckResNetBlock,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNetBlock,
    ResNetTiny,
)
from robust_losses_jax.models.small import MLP, SmallCNN

__all__ = [
    "MLP",
    "BottleneckResNetBlock",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNetBlock",
    "ResNetTiny",
    "SmallCNN",
    "available_models",
    "count_params",
    "get_model",
    "has_batch_norm",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "mlp": MLP,
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet_tiny": ResNetTiny,
}


def available_models() -> tuple[str, ...]:
    """Names accepted by ``get_model``, sorted."""
    return tuple(sorted(_MODELS))


def _field_names(constructor: Callable[..., nn.Module]) -> tuple[str, ...]:
    """A module class's (or a preset's) dataclass fields, less flax's ``parent`` and ``name``."""
    cls = constructor.func if isinstance(constructor, functools.partial) else constructor
    return tuple(
        f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")
    )


def get_model(
    name: str,
    num_classes: int,
    *,
    dtype: Any = jnp.float32,
    bn_axis_name: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The model ``name`` with ``num_classes`` outputs.

    Args:
      name: one of ``available_models()``.
      num_classes: number of logits, at least 2.
      dtype: compute dtype; parameters and logits stay float32.
      bn_axis_name: BatchNorm's cross-device axis (e.g. ``"data"`` inside ``jax.pmap`` or
        ``jax.shard_map``); ignored by models without BatchNorm.
      **kwargs: other fields of the model, e.g. ``stem="imagenet"`` or ``num_filters`` for the
        ResNets, ``hidden_sizes`` or ``dropout_rate`` for ``mlp``.

    Raises:
      ValueError: unknown name, ``num_classes < 2``, or a field the model does not take.
    """
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}; available: {', '.join(available_models())}.")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    constructor = _MODELS[name]
    fields = _field_names(constructor)
    # What the preset fixes (e.g. ResNet18's stage_sizes) and get_model's own arguments.
    fixed = {"num_classes", "dtype", "bn_axis_name", *getattr(constructor, "keywords", {})}
    settable = [f for f in fields if f not in fixed]
    unknown = sorted(set(kwargs) - set(settable))
    if unknown:
        raise ValueError(
            f"Model {name!r} does not take {', '.join(unknown)}; it takes: {', '.join(settable)}."
        )
    if "bn_axis_name" in fields:
        kwargs["bn_axis_name"] = bn_axis_name
    return constructor(num_classes=num_classes, dtype=dtype, **kwargs)


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model``'s variables have a ``batch_stats`` collection (only the ResNets do)."""
    return isinstance(model, ResNet)


def count_params(params: Any) -> int:
    """Number of scalars in a pytree of arrays (or of ``jax.ShapeDtypeStruct`` from eval_shape).

    Pass ``variables["params"]``: the BatchNorm running statistics in ``batch_stats`` are not
    trainable parameters.
    """
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
