"""Tests for the input pipeline and the offline tfds builders (real tfds preparation, no mocks)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_losses_jax import input_pipeline as ip
from robust_losses_jax import local_datasets


@pytest.fixture(scope="module")
def digits():
    return ip.load_split("sklearn_digits", "train")


def test_sklearn_digits_split_in_canonical_order(digits):
    assert digits.images.shape == (1500, 8, 8, 1) and digits.images.dtype == np.uint8
    assert digits.labels.shape == (1500,) and digits.num_classes == 10
    again = ip.load_split("sklearn_digits", "train")
    np.testing.assert_array_equal(again.labels, digits.labels)  # Same order every read.
    first = ip.load_split("sklearn_digits", "train", num_examples=100)
    np.testing.assert_array_equal(first.labels, digits.labels[:100])
    np.testing.assert_array_equal(first.images, digits.images[:100])
    assert len(ip.load_split("sklearn_digits", "test")) == 297


@pytest.mark.skipif(
    not local_datasets.fashion_mnist_files_present(),
    reason="needs Debian's dataset-fashion-mnist (make test installs it)",
)
@pytest.mark.slow
def test_fashion_mnist_prepares_offline_from_idx_files():
    split = ip.load_split("fashion_mnist", "test")
    assert split.images.shape == (10_000, 28, 28, 1)
    assert split.class_names[0] == "T-shirt/top" and split.num_classes == 10
    np.testing.assert_array_equal(np.bincount(split.labels), np.full(10, 1000))
    # The same examples as the IDX file, in tfds's order (a permutation of it).
    idx_labels = local_datasets.read_idx_labels(
        f"{local_datasets.FASHION_MNIST_DIR}/t10k-labels-idx1-ubyte.gz"
    )
    idx_images = local_datasets.read_idx_images(
        f"{local_datasets.FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz"
    )
    assert not np.array_equal(split.labels, idx_labels)  # tfds orders the split by key hash.
    # ...but it holds exactly the IDX file's (image, label) pairs.
    pairs = lambda images, labels: sorted(  # noqa: E731
        zip(map(bytes, images.reshape(len(images), -1)), labels.tolist(), strict=True)
    )
    assert pairs(split.images, split.labels) == pairs(idx_images, idx_labels)


def test_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown dataset 'no_such_data'"):
        ip.load_split("no_such_data", "train", str(tmp_path))


def test_undownloadable_dataset_says_what_to_do(tmp_path):
    # No internet here: tfds cannot download mnist into an empty data dir.
    with pytest.raises(ip.DatasetUnavailableError, match=r"'mnist' is not prepared .* To use it"):
        ip.load_split("mnist", "train", str(tmp_path))


def test_missing_fashion_mnist_files_say_what_to_install(tmp_path):
    builder = local_datasets.LocalFashionMnist(data_dir=str(tmp_path), source_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"apt-get install -y dataset-fashion-mnist"):
        builder.download_and_prepare()


def test_epoch_permutation_is_seeded():
    key = jax.random.key(0)
    a, b = ip.epoch_permutation(key, 0, 100), ip.epoch_permutation(key, 1, 100)
    np.testing.assert_array_equal(np.sort(a), np.arange(100))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, ip.epoch_permutation(key, 0, 100))


@pytest.mark.parametrize("num_devices", [1, 2, 8])
def test_train_batches_shapes_and_order(digits, num_devices):
    order = ip.epoch_permutation(jax.random.key(1), 0, len(digits))
    batches = list(ip.train_batches(digits.images, digits.labels, order, 64, num_devices))
    assert len(batches) == 1500 // 64 == 23  # The last partial batch dropped.
    first = batches[0]
    assert first["image"].shape == (num_devices, 64 // num_devices, 8, 8, 1)
    seen = np.concatenate([b["index"].reshape(-1) for b in batches])
    np.testing.assert_array_equal(seen, order[: 23 * 64])  # Same order whatever the devices.
    np.testing.assert_array_equal(
        first["label"].reshape(-1), digits.labels[first["index"].reshape(-1)]
    )
    resumed = list(ip.train_batches(digits.images, digits.labels, order, 64, num_devices, 20))
    np.testing.assert_array_equal(resumed[0]["index"], batches[20]["index"])


def test_eval_batches_cover_every_example_once_with_padding_masked(digits):
    batches = list(ip.eval_batches(digits.images, digits.labels, 400, 8))
    assert len(batches) == 4  # 1500 = 3 * 400 + 300
    mask = np.concatenate([b["mask"].reshape(-1) for b in batches])
    index = np.concatenate([b["index"].reshape(-1) for b in batches])
    assert mask.sum() == 1500 and mask.size == 1600
    np.testing.assert_array_equal(index[mask], np.arange(1500))
    assert not mask[-100:].any()


def test_bad_batch_size():
    with pytest.raises(ValueError, match=r"batch size 100 is not divisible by the device count 8"):
        ip.check_batch_size(100, 8)


@pytest.mark.slow
def test_preprocess_normalises_and_augments_per_example(digits):
    mean, std = ip.channel_stats(digits.images)
    images = jnp.asarray(digits.images[:16])
    index = jnp.arange(16)
    plain = ip.preprocess(images, index, key=jax.random.key(0), epoch=0, mean=mean, std=std,
                          augment=False)  # fmt: skip
    np.testing.assert_allclose(plain, (digits.images[:16] / 255.0 - mean) / std, rtol=1e-5)
    aug = ip.preprocess(images, index, key=jax.random.key(0), epoch=0, mean=mean, std=std,
                        augment=True)  # fmt: skip
    assert aug.shape == plain.shape and not np.allclose(aug, plain)
    # An example's augmentation depends on its index and epoch, not on its batch.
    half = ip.preprocess(images[8:], index[8:], key=jax.random.key(0), epoch=0, mean=mean,
                         std=std, augment=True)  # fmt: skip
    np.testing.assert_array_equal(half, aug[8:])
    other_epoch = ip.preprocess(images, index, key=jax.random.key(0), epoch=1, mean=mean,
                                std=std, augment=True)  # fmt: skip
    assert not np.array_equal(other_epoch, aug)


def _write_npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (30, 6, 6), np.uint8),
        "train_labels": np.arange(30) % 3,
        "test_images": rng.integers(0, 256, (9, 6, 6, 1), np.uint8),
        "test_labels": np.arange(9) % 3,
        "class_names": np.array(["a", "b", "c"]),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return f"npz:{path}"


def test_user_data_from_an_npz_file(tmp_path):
    name = _write_npz(tmp_path / "mine.npz")
    train = ip.load_split(name, "train", num_examples=12)
    assert train.images.shape == (12, 6, 6, 1) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.labels, np.arange(12) % 3)
    assert train.num_classes == 3 and train.class_names == ("a", "b", "c")
    assert ip.load_split(name, "test").images.shape == (9, 6, 6, 1)
    ip.check_dataset(name)  # Both splits are fine.


@pytest.mark.parametrize(
    "overrides,message",
    [({"train_labels": np.r_[np.arange(29) % 3, 3]}, r"train_labels\[29\] = 3 is outside \[0, 3\)"),
     ({"test_labels": -np.ones(9, int)}, r"test_labels\[0\] = -1 is outside \[0, 3\) \(9 labels"),
     ({"train_labels": np.zeros(29, int)}, r"train_labels must be integers \[30\]"),
     ({"train_labels": np.zeros(30)}, r"must be integers"),
     ({"train_images": np.zeros((30, 6, 6), np.float32)}, r"train_images must be uint8"),
     ({"test_images": None}, r"has only one of test_images and test_labels"),
     ({"train_images": None}, r"lacks train_images")],
)  # fmt: skip
def test_bad_user_data_names_the_array_and_the_value(tmp_path, overrides, message):
    name = _write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(ValueError, match=message):
        ip.check_dataset(name)
