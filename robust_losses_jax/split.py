"""A dataset split held in memory: images, labels and the class names, in canonical order."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
    """A whole split in canonical order, on the host.

    Attributes:
      images: uint8 ``[N, H, W, C]``.
      labels: int32 ``[N]``.
      num_classes: number of classes of the dataset.
      class_names: names of the classes (``str(i)`` when the dataset has none).
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, num_examples: int | None) -> Split:
        """The first ``num_examples`` examples (all when None)."""
        if num_examples is None:
            return self
        if not 1 <= num_examples <= len(self):
            raise ValueError(f"num_examples={num_examples} must be in [1, {len(self)}].")
        return dataclasses.replace(
            self, images=self.images[:num_examples], labels=self.labels[:num_examples]
        )
