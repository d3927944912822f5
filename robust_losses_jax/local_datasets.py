"""tfds builders for data that is on this machine, for use without internet.

- :class:`LocalFashionMnist` prepares tfds's ``fashion_mnist`` from the original IDX ``.gz`` files
  (Debian's ``dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist/``). Their
  bytes differ from the archives tfds checksums, so instead of a download it reads the files. It is
  tfds's own ``FashionMNIST`` builder with the same name, version, features and example keys (the
  index in the IDX file), so tfds writes the split in the same order as on a machine that
  downloads it, and later ``tfds.builder('fashion_mnist')`` finds it prepared.
- :class:`SklearnDigits`: scikit-learn's 8x8 digits (bundled with scikit-learn, 1,797 images) as a
  tiny tfds image-classification dataset for tests and smoke runs: the first 1,500 images are
  ``train``, the remaining 297 ``test``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

FASHION_MNIST_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_IMAGE_MAGIC, IDX_LABEL_MAGIC = 2051, 2049


def read_idx_images(path: str | Path) -> np.ndarray:
    """An IDX image file (optionally gzipped) as uint8 ``[N, H, W, 1]``."""
    data = _read_maybe_gzip(path)
    magic, count, rows, cols = np.frombuffer(data[:16], ">u4")
    if magic != IDX_IMAGE_MAGIC or len(data) != 16 + count * rows * cols:
        raise ValueError(f"{path} is not an IDX image file (magic {magic}, {len(data)} bytes).")
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols, 1)


def read_idx_labels(path: str | Path) -> np.ndarray:
    """An IDX label file (optionally gzipped) as int64 ``[N]``."""
    data = _read_maybe_gzip(path)
    magic, count = np.frombuffer(data[:8], ">u4")
    if magic != IDX_LABEL_MAGIC or len(data) != 8 + count:
        raise ValueError(f"{path} is not an IDX label file (magic {magic}, {len(data)} bytes).")
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)


def _read_maybe_gzip(path: str | Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def fashion_mnist_files_present(directory: str | Path = FASHION_MNIST_DIR) -> bool:
    return all(
        (Path(directory) / name).is_file() for pair in FASHION_MNIST_FILES.values() for name in pair
    )


class LocalFashionMnist(tfds_mnist.FashionMNIST, skip_registration=True):
    """tfds's ``fashion_mnist`` (same name, version and keys), prepared from local IDX files."""

    name = "fashion_mnist"

    def __init__(self, *, source_dir: str | Path = FASHION_MNIST_DIR, **kwargs):
        self._source_dir = Path(source_dir)
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        if not fashion_mnist_files_present(self._source_dir):
            raise FileNotFoundError(
                f"Fashion-MNIST IDX files not found in {self._source_dir}: install Debian's "
                "package (apt-get install -y dataset-fashion-mnist) or set FASHION_MNIST_DIR."
            )
        return {
            split: self._generate_examples(
                images=self._source_dir / images, labels=self._source_dir / labels
            )
            for split, (images, labels) in FASHION_MNIST_FILES.items()
        }

    def _generate_examples(self, images, labels):  # pylint: disable=arguments-differ
        image_array, label_array = read_idx_images(images), read_idx_labels(labels)
        # The IDX index is the key, as in tfds's builder: tfds orders the written split by key.
        for index, (image, label) in enumerate(zip(image_array, label_array, strict=True)):
            yield index, {"image": image, "label": int(label)}


class SklearnDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """scikit-learn's 8x8 digits as a tfds dataset (``train`` 1,500, ``test`` 297)."""

    name = "sklearn_digits"
    VERSION = tfds.core.Version("1.0.0")
    NUM_TRAIN = 1500

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn's 8x8 handwritten digits (UCI), pixel values 0-16 times 15.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        from sklearn.datasets import load_digits  # Only this builder needs scikit-learn.

        digits = load_digits()
        images = (digits.images * 15).astype(np.uint8)[..., None]  # 0..16 -> 0..240.
        labels = digits.target.astype(np.int64)
        cut = self.NUM_TRAIN
        return {
            "train": self._generate_examples(images[:cut], labels[:cut]),
            "test": self._generate_examples(images[cut:], labels[cut:]),
        }

    def _generate_examples(self, images, labels):  # pylint: disable=arguments-differ
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {"image": image, "label": int(label)}


# Builders that prepare offline, by tfds name.
LOCAL_BUILDERS = {"fashion_mnist": LocalFashionMnist, "sklearn_digits": SklearnDigits}
