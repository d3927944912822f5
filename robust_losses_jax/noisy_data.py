"""A run's data: the training split with the labels it trains on, and the clean test split.

Corruption is decided over the whole training split from the run's seed, then the first
``train_size`` examples are kept: the same seed gives the same flips whatever the subset.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax import corruption, input_pipeline


@dataclasses.dataclass(frozen=True)
class NoisyData:
    """A run's data, as host arrays.

    Attributes:
      images: uint8 ``[N, H, W, C]``: the first ``train_size`` training examples, in canonical
        order.
      true_label: int ``[N]``: the split's own labels.
      given_label: int ``[N]``: the labels the run trains on (corrupted by its noise).
      is_corrupted: bool ``[N]``: ``given_label != true_label``.
      test_images, test_labels: the test split, ``[T, H, W, C]`` and ``[T]`` (``T`` may be 0).
      num_classes: ``C``.
      class_names: the classes' names, or None.
      mean, std: float32 per-channel statistics of the whole training split, ``[channels]``.
    """

    images: np.ndarray
    true_label: np.ndarray
    given_label: np.ndarray
    is_corrupted: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None
    mean: np.ndarray
    std: np.ndarray

    def __len__(self) -> int:
        return len(self.given_label)


def load_splits(
    cfg: config_lib.Config, data_dir: str | None
) -> tuple[input_pipeline.Split, input_pipeline.Split]:
    """``(train, test)`` splits of ``cfg.dataset`` (the whole training split: see the module)."""
    return (
        input_pipeline.load_split(cfg.dataset, "train", data_dir, image_size=cfg.image_size),
        input_pipeline.load_split(
            cfg.dataset, "test", data_dir, cfg.test_size, missing_ok=True, image_size=cfg.image_size
        ),
    )


def check_noise(cfg: config_lib.Config) -> None:
    """Refuse (one ``ValueError`` line) noise ``cfg.dataset`` cannot take: an asymmetric kind
    for a dataset without a class-pair map."""
    if cfg.noise_kind == "asymmetric":
        try:
            corruption.asymmetric_map_for(cfg.dataset)
        except ValueError as error:
            raise ValueError(
                f"--noise-kind=asymmetric: {error} Use --noise-kind=symmetric or transition."
            ) from None


def noisy_training_data(
    cfg: config_lib.Config,
    data_dir: str | None,
    splits: tuple[input_pipeline.Split, input_pipeline.Split] | None = None,
) -> NoisyData:
    """The training split with the run's corrupted labels, and the test split.

    ``splits``: :func:`load_splits`' result, when several runs share it.
    """
    train_split, test_split = splits or load_splits(cfg, data_dir)
    num_classes = train_split.num_classes
    kwargs: dict[str, Any] = {}
    if cfg.noise_kind == "asymmetric":
        kwargs["asymmetric_map"] = corruption.asymmetric_map_for(cfg.dataset)
    corruption_key = jax.random.fold_in(jax.random.key(cfg.seed), 0)
    noisy, is_corrupted = corruption.corrupt_labels(
        corruption_key,
        train_split.labels,
        num_classes,
        cfg.noise_rate,
        kind=cfg.noise_kind,
        transition=None if cfg.transition is None else np.asarray(cfg.transition),
        **kwargs,
    )
    mean, std = input_pipeline.channel_stats(train_split.images)
    keep = slice(0, cfg.train_size)
    return NoisyData(
        images=train_split.images[keep],
        true_label=train_split.labels[keep],
        given_label=np.asarray(noisy)[keep],
        is_corrupted=np.asarray(is_corrupted)[keep],
        test_images=test_split.images,
        test_labels=test_split.labels,
        num_classes=num_classes,
        class_names=train_split.class_names,
        mean=mean,
        std=std,
    )
