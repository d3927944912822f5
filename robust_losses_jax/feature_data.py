"""Feature vectors instead of images: an ``.npz`` of embeddings or tabular columns.

``--dataset=npz:PATH`` holds features when it has ``train_features`` (float ``[N, D]``, finite)
and ``train_labels`` (integers ``[N]``); optional: ``test_features``/``test_labels`` (both or
neither, the same ``D``), ``num_classes`` or ``class_names``. Every problem is one
``ValueError`` line naming the file, the array and the bad value.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from robust_losses_jax.user_data import (
    NPZ_PREFIX,
    check_label_range,
    check_labels,
    npz_class_names,
    open_npz,
)

FEATURE_KEYS = ("train_features", "train_labels", "test_features", "test_labels")


@dataclasses.dataclass(frozen=True)
class FeatureSplits:
    """A features dataset, checked, on the host.

    Attributes:
      train_features: float32 ``[N, D]``; train_labels: int32 ``[N]``.
      test_features: float32 ``[T, D]``; test_labels: int32 ``[T]`` (``T`` may be 0).
      class_names: ``C`` names (``str(k)`` where none are given).
    """

    train_features: np.ndarray
    train_labels: np.ndarray
    test_features: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def holds_features(dataset: str) -> bool:
    """Whether ``--dataset`` is an npz with ``train_features`` (read without loading it)."""
    if not dataset.startswith(NPZ_PREFIX):
        return False
    try:
        with open_npz(dataset.removeprefix(NPZ_PREFIX)) as data:
            return "train_features" in data.files
    except ValueError:
        return False  # The images loader names what is wrong with the file.


def _features(where: str, key: str, array: np.ndarray) -> np.ndarray:
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating) or not array.shape[1]:
        raise ValueError(
            f"{where}: {key} must be floats [N, D] with D >= 1; got {array.dtype} "
            f"{list(array.shape)}."
        )
    bad = ~np.isfinite(array)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise ValueError(
            f"{where}: {key}[{row}, {column}] = {array[row, column]}; features must be finite "
            f"({int(bad.any(axis=1).sum())} rows are not)."
        )
    return array.astype(np.float32)


def load_features(path: str | Path) -> FeatureSplits:
    """The features npz at ``path`` (see the module docstring), checked."""
    where = f"npz:{path}"
    with open_npz(path) as data:
        if "train_labels" not in data.files:
            raise ValueError(f"{where} has train_features but no train_labels; has {data.files}.")
        try:
            arrays = {k: data[k] for k in FEATURE_KEYS if k in data.files}
        except ValueError:
            raise ValueError(f"{where}: features must be numeric arrays, not objects.") from None
        train = _features(where, "train_features", arrays["train_features"])
        train_labels = arrays["train_labels"]
        check_labels(where, "train_labels", train_labels, len(train), per="row of features")
        names = npz_class_names(where, data, train_labels)
    check_label_range(where, "train_labels", train_labels, len(names))
    if ("test_features" in arrays) != ("test_labels" in arrays):
        raise ValueError(f"{where} has only one of test_features and test_labels; pass both.")
    test = np.zeros((0, train.shape[1]), np.float32)
    test_labels = np.zeros(0, np.int32)
    if "test_features" in arrays:
        test = _features(where, "test_features", arrays["test_features"])
        if test.shape[1] != train.shape[1]:
            raise ValueError(
                f"{where}: test_features have {test.shape[1]} columns, train_features "
                f"{train.shape[1]}; they must match."
            )
        test_labels = arrays["test_labels"]
        check_labels(where, "test_labels", test_labels, len(test), per="row of features")
        check_label_range(where, "test_labels", test_labels, len(names))
    return FeatureSplits(
        train, train_labels.astype(np.int32), test, test_labels.astype(np.int32), names
    )
