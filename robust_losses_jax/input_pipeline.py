"""Input pipeline: tfds splits in canonical order, seeded epoch order, device batches.

A split is read once through tensorflow-datasets (``shuffle_files=False``: the split's canonical
order, the order corruption and per-example outputs are indexed by) into host arrays. Training
batches follow a permutation drawn from ``(key, epoch)``, so the order does not depend on the
device count. Batches are host dicts ``{'image': uint8, 'label', 'index'}`` shaped
``[num_devices, per_device_batch, ...]``; normalisation and augmentation are JAX functions run
on the device inside the jitted step, keyed by ``(key, epoch, index)``, so they too are independent
of batch size and device count.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import importlib.util
import itertools
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from robust_losses_jax import user_data
from robust_losses_jax.split import Split  # Every loader returns one; kept importable from here.

Array = jax.Array
Batch = dict[str, np.ndarray]

KNOWN_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "sklearn_digits")
# Datasets trained with CIFAR augmentation (random crop with 4-pixel padding, horizontal flip).
AUGMENTED_BY_DEFAULT = ("cifar10", "cifar100")


class DatasetUnavailableError(RuntimeError):
    """A dataset that can be neither found prepared nor prepared/downloaded here."""


def default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR", str(Path.home() / "tensorflow_datasets"))


@contextlib.contextmanager
def _prepare_lock(data_dir: str, name: str):
    """Serialise preparation of one dataset across processes (parallel tests, sweeps)."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(data_dir) / f".{name}.prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# Where tfds keeps its prepared datasets: reachable, or a download would only retry for minutes.
_DOWNLOAD_PROBE = ("storage.googleapis.com", 443)


def _network_reachable(timeout: float = 3.0) -> bool:
    """Whether a download can start: a proxy is configured, or tfds's storage answers at once."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection(_DOWNLOAD_PROBE, timeout=timeout).close()
    except OSError:
        return False
    return True


def require_tensorflow(name: str) -> None:
    """Raise :class:`DatasetUnavailableError` (saying what to install) when TensorFlow is not
    installed: tfds prepares and reads dataset ``name`` with it. The rest of the package,
    ``npz:PATH`` and ``folder:PATH`` datasets included, never imports TensorFlow."""
    if importlib.util.find_spec("tensorflow") is None:
        raise DatasetUnavailableError(
            f"Dataset {name!r} is read through tensorflow-datasets, which needs TensorFlow, and "
            "none is installed: pip install 'robust_losses_jax[tf]' (or: pip install tensorflow). "
            "npz:PATH, folder:PATH and --pred-probs need no TensorFlow."
        )


def load_builder(name: str, data_dir: str | None = None):
    """A prepared tfds builder for ``name``, preparing it first if needed.

    Offline, ``fashion_mnist`` is prepared from Debian's IDX files and ``sklearn_digits`` from
    scikit-learn (see :mod:`robust_losses_jax.local_datasets`); other datasets are downloaded by
    tfds. A dataset that can be neither found nor downloaded raises
    :class:`DatasetUnavailableError` saying what to install or where to put the files.
    """
    # tfds (and local_datasets, built on it) only when a tfds dataset is read: it is heavy, and
    # the core runs without TensorFlow.
    import tensorflow_datasets as tfds

    from robust_losses_jax import local_datasets  # Built on tfds: imported with it.

    require_tensorflow(name)
    data_dir = data_dir or default_data_dir()
    local_cls = local_datasets.LOCAL_BUILDERS.get(name)
    if name == "fashion_mnist" and not local_datasets.fashion_mnist_files_present():
        local_cls = None  # No Debian files: tfds's own builder downloads it, where internet is.
    if local_cls is not None:
        builder = local_cls(data_dir=data_dir)
    else:
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as error:  # tfds raises several types for unknown names.
            raise ValueError(
                f"Unknown dataset {name!r}: not a tfds dataset. Known here: "
                f"{', '.join(KNOWN_DATASETS)}, or any tfds image-classification dataset."
            ) from error
    if builder.is_prepared():
        return builder
    with _prepare_lock(data_dir, name):
        if builder.is_prepared():  # Another process prepared it while we waited.
            return builder
        if local_cls is None and not _network_reachable():
            offline = (
                f"install Debian's dataset-fashion-mnist (or set FASHION_MNIST_DIR to a folder "
                f"of its four IDX files), run once with internet, or copy a prepared tfds "
                f"'{name}' into {data_dir}"
                if name == "fashion_mnist"
                else f"run once with internet, or copy a prepared tfds '{name}' into {data_dir}"
            )
            raise DatasetUnavailableError(
                f"Dataset {name!r} is not prepared in {data_dir} and cannot be downloaded "
                f"(no network). To use it: {offline}."
            )
        try:
            builder.download_and_prepare()
        except FileNotFoundError as error:
            raise DatasetUnavailableError(str(error)) from error
        except Exception as error:
            hint = (
                "install Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)"
                if name == "fashion_mnist"
                else f"run once with internet, or copy a prepared tfds '{name}' into {data_dir}"
            )
            raise DatasetUnavailableError(
                f"Dataset {name!r} is not prepared in {data_dir} and could not be prepared "
                f"({type(error).__name__}: {str(error)[:200]}). To use it: {hint}."
            ) from error
    return builder


def check_dataset(name: str, data_dir: str | None = None) -> None:
    """Refuse, before any work, a dataset the runner cannot use (``ValueError``, one line).

    Known names and tfds builders pass (nothing is downloaded); ``npz:PATH`` and
    ``folder:PATH`` are read and checked (:mod:`robust_losses_jax.user_data`). A tfds dataset
    without TensorFlow raises :class:`DatasetUnavailableError` (:func:`require_tensorflow`).
    """
    if user_data.is_user_dataset(name):
        for split in ("train", "test"):
            user_data.load_split(name, split)
        return
    require_tensorflow(name)
    if name in KNOWN_DATASETS:
        return
    import tensorflow_datasets as tfds  # Only for a tfds dataset (heavy; TensorFlow optional).

    try:
        tfds.builder(name, data_dir=data_dir or default_data_dir())
    except Exception:  # tfds raises several types for unknown names; it downloads nothing here.
        raise ValueError(
            f"Unknown dataset {name!r} (--dataset); choose from {', '.join(KNOWN_DATASETS)}, "
            "npz:PATH or folder:PATH (your own data), or any tfds image-classification dataset."
        ) from None


def load_split(
    name: str,
    split: str,
    data_dir: str | None = None,
    num_examples: int | None = None,
    *,
    missing_ok: bool = False,
    image_size: str | None = None,
) -> Split:
    """A whole split (or its first ``num_examples``) in canonical order, as host arrays.

    Args:
      name: a tfds image-classification dataset with ``image`` and ``label`` features, or
        ``npz:PATH`` or ``folder:PATH`` (:mod:`robust_losses_jax.user_data`).
      split: ``'train'`` or ``'test'`` (any tfds split name).
      data_dir: tfds data directory (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      num_examples: keep the first N examples only.
      missing_ok: a split the dataset lacks is an empty :class:`Split` instead of an error (a
        dataset without a test split).
      image_size: ``folder:PATH`` only: ``"H"`` or ``"HxW"`` (default: its most common size).
    """
    if user_data.is_user_dataset(name):
        loaded = user_data.load_split(name, split, image_size)
        if not num_examples or not len(loaded):
            return loaded
        return loaded.take(min(num_examples, len(loaded)))
    import tensorflow_datasets as tfds  # Only for a tfds dataset (heavy; TensorFlow optional).

    builder = load_builder(name, data_dir)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(f"Dataset {name!r} has no 'image'/'label' features: {list(features)}.")
    if split not in builder.info.splits and missing_ok:
        train = load_split(name, "train", data_dir, 1)
        return dataclasses.replace(train, images=train.images[:0], labels=train.labels[:0])
    if split not in builder.info.splits:
        raise ValueError(f"Dataset {name!r} has no split {split!r}: {list(builder.info.splits)}.")
    tfds_split = split if num_examples is None else f"{split}[:{num_examples}]"
    arrays = tfds.as_numpy(builder.as_dataset(split=tfds_split, batch_size=-1, shuffle_files=False))
    label_feature = features["label"]
    names = tuple(label_feature.names) if label_feature.names else ()
    num_classes = int(label_feature.num_classes)
    return Split(
        images=np.asarray(arrays["image"], np.uint8),
        labels=np.asarray(arrays["label"], np.int32),
        num_classes=num_classes,
        class_names=names or tuple(str(i) for i in range(num_classes)),
    )


# --------------------------------------------------------------------------------------------------
# Host batching.
# --------------------------------------------------------------------------------------------------


def epoch_permutation(key: Array, epoch: int, num_examples: int) -> np.ndarray:
    """The training order of epoch ``epoch``: a permutation of ``range(num_examples)``.

    Depends only on ``(key, epoch, num_examples)``: not on batch size or device count.
    """
    return np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), num_examples))


def check_batch_size(global_batch: int, num_devices: int) -> int:
    """Per-device batch size; ValueError when the global batch does not split evenly."""
    if global_batch < 1:
        raise ValueError(f"batch size {global_batch} must be >= 1.")
    if global_batch % num_devices:
        raise ValueError(
            f"batch size {global_batch} is not divisible by the device count {num_devices}; "
            f"use a multiple of {num_devices}."
        )
    return global_batch // num_devices


def _shard(array: np.ndarray, num_devices: int) -> np.ndarray:
    return array.reshape(num_devices, array.shape[0] // num_devices, *array.shape[1:])


def train_batches(
    images: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    global_batch: int,
    num_devices: int,
    start_batch: int = 0,
) -> Iterator[Batch]:
    """Training batches of one epoch, in ``order``, the last incomplete batch dropped.

    Yields dicts with ``image`` uint8 ``[D, B/D, H, W, C]``, ``label`` int32 ``[D, B/D]`` (the
    labels trained on, i.e. the noisy ones) and ``index`` int32 ``[D, B/D]`` (row in the split).
    ``start_batch`` skips the first batches (to resume inside an epoch).
    """
    check_batch_size(global_batch, num_devices)
    for start in range(start_batch * global_batch, len(order) - global_batch + 1, global_batch):
        index = order[start : start + global_batch]
        yield {
            "image": _shard(images[index], num_devices),
            "label": _shard(labels[index].astype(np.int32), num_devices),
            "index": _shard(index.astype(np.int32), num_devices),
        }


def process_slice(batch: Batch, process_index: int = 0, process_count: int = 1) -> Batch:
    """This process's part of a global device batch: ``[D, ...] -> [D / P, ...]``.

    With several processes (multi-host), process ``p`` feeds the global devices
    ``[p * D / P, (p + 1) * D / P)`` (its own, in ``jax.devices()`` order), so every device gets
    the same rows whatever the number of processes: 2 processes x 4 devices train exactly like
    1 process x 8. One process: the batch itself.
    """
    if process_count == 1:
        return batch
    num_devices = len(next(iter(batch.values())))
    if num_devices % process_count:
        raise ValueError(
            f"{num_devices} devices do not split evenly over {process_count} processes."
        )
    local = num_devices // process_count
    return {k: v[process_index * local : (process_index + 1) * local] for k, v in batch.items()}


def eval_batches(
    images: np.ndarray, labels: np.ndarray, global_batch: int, num_devices: int
) -> Iterator[Batch]:
    """Every example exactly once, in canonical order; the last batch padded and masked.

    Yields dicts with ``image``, ``label``, ``index`` as in :func:`train_batches` and ``mask`` bool
    ``[D, B/D]``, False on padding rows (which repeat example 0).
    """
    check_batch_size(global_batch, num_devices)
    num_examples = len(labels)
    for start in range(0, num_examples, global_batch):
        index = np.arange(start, start + global_batch)
        mask = index < num_examples
        index = np.where(mask, index, 0)
        yield {
            "image": _shard(images[index], num_devices),
            "label": _shard(labels[index].astype(np.int32), num_devices),
            "index": _shard(index.astype(np.int32), num_devices),
            "mask": _shard(mask, num_devices),
        }


def prefetch_to_devices(
    batches: Iterable[Batch], sharding: jax.sharding.Sharding, size: int = 2
) -> Iterator[dict[str, Array]]:
    """Put batches on the devices ``size`` ahead of use (``jax.device_put`` is asynchronous)."""
    queue: collections.deque = collections.deque()
    iterator = iter(batches)
    for batch in itertools.islice(iterator, size):
        queue.append(jax.device_put(batch, sharding))
    while queue:
        yield queue.popleft()
        for batch in itertools.islice(iterator, 1):
            queue.append(jax.device_put(batch, sharding))


# --------------------------------------------------------------------------------------------------
# Device-side preprocessing (pure JAX, runs inside the jitted step).
# --------------------------------------------------------------------------------------------------


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1]: two ``[C]``."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return pixels.mean(0).astype(np.float32), np.maximum(pixels.std(0), 1e-3).astype(np.float32)


def normalize(images: Array, mean: Array, std: Array) -> Array:
    """uint8 ``[..., H, W, C]`` -> float32, scaled to [0, 1] then standardised per channel."""
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def augment_example(key: Array, image: Array, pad: int = 4) -> Array:
    """CIFAR augmentation of an ``[H, W, C]`` image: random crop after zero padding, random flip."""
    crop_key, flip_key = jax.random.split(key)
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
    cropped = jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
    return jnp.where(jax.random.bernoulli(flip_key), cropped[:, ::-1], cropped)


def preprocess(
    images: Array,
    index: Array,
    *,
    key: Array,
    epoch: Array,
    mean: Array,
    std: Array,
    augment: bool,
) -> Array:
    """Normalise (and augment) a batch ``[B, H, W, C]`` uint8 -> float32.

    The augmentation of example ``i`` in epoch ``e`` uses ``fold_in(fold_in(key, e), i)``: it does
    not depend on the batch it lands in.
    """
    images = normalize(images, mean, std)
    if not augment:
        return images
    epoch_key = jax.random.fold_in(key, epoch)
    keys = jax.vmap(lambda i: jax.random.fold_in(epoch_key, i))(index)
    return jax.vmap(augment_example)(keys, images)
