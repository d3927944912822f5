"""The user's own data: npz files with optional parts, folders of images, bad input."""

import numpy as np
import pytest
from PIL import Image

from robust_losses_jax import input_pipeline as ip
from robust_losses_jax import user_data


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_without_test_split_or_class_count_infers_them(tmp_path):
    images = np.arange(20 * 5 * 5, dtype=np.uint8).reshape(20, 5, 5)
    name = _npz(tmp_path / "min.npz", train_images=images, train_labels=np.arange(20) % 4)
    train = ip.load_split(name, "train")
    assert train.num_classes == 4 and train.class_names == ("0", "1", "2", "3")
    assert train.images.shape == (20, 5, 5, 1)
    test = ip.load_split(name, "test")
    assert len(test) == 0 and test.images.shape == (0, 5, 5, 1) and test.num_classes == 4
    ip.check_dataset(name)


def _write_png(path, array):
    Image.fromarray(array).save(path)


def test_folder_of_images_one_class_per_folder_converted_by_the_rule(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / ".hidden").mkdir()  # Skipped, as are non-image files.
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    for i in range(3):
        _write_png(tmp_path / "cat" / f"{i}.png", rng.integers(0, 256, (8, 6), np.uint8))
    _write_png(tmp_path / "dog" / "a.png", rng.integers(0, 256, (8, 6, 3), np.uint8))  # RGB.
    _write_png(tmp_path / "dog" / "b.png", rng.integers(0, 256, (16, 12), np.uint8))  # Larger.
    split = ip.load_split(f"folder:{tmp_path}", "train")
    assert split.class_names == ("cat", "dog") and split.num_classes == 2
    np.testing.assert_array_equal(split.labels, [0, 0, 0, 1, 1])
    # RGB because one image is; 8 x 6, the most common size; the gray cat kept its pixels.
    assert split.images.shape == (5, 8, 6, 3) and split.images.dtype == np.uint8
    first = np.asarray(Image.open(tmp_path / "cat" / "0.png"))
    np.testing.assert_array_equal(split.images[0, ..., 0], first)
    np.testing.assert_array_equal(split.images[0, ..., 1], first)
    assert len(ip.load_split(f"folder:{tmp_path}", "test", missing_ok=True)) == 0


def test_all_gray_folder_stays_one_channel(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _write_png(tmp_path / name / "x.png", np.full((4, 4), 7, np.uint8))
    split = user_data.load_folder(tmp_path)
    assert split.images.shape == (2, 4, 4, 1)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"train_images": np.zeros((6, 4, 4), np.uint8), "train_labels": np.arange(5)},
         r"train_labels must be integers \[6\] \(one per image\)"),
        ({"train_images": np.zeros((6, 4, 4), np.float32), "train_labels": np.arange(6)},
         r"train_images must be uint8"),
        ({"train_images": np.array([np.zeros((4, 4), np.uint8), np.zeros((5, 5), np.uint8)],
                                   dtype=object), "train_labels": np.arange(2)},
         r"train_images is an object array \(images of mixed shapes\?\)"),
        ({"train_images": np.zeros((6, 4, 4), np.uint8), "train_labels": np.arange(6),
          "class_names": np.array(["a", "b", "c"])},
         r"train_labels\[3\] = 3 is outside \[0, 3\)"),
        ({"train_images": np.zeros((6, 4, 4), np.uint8), "train_labels": np.arange(6),
          "test_images": np.zeros((2, 5, 5), np.uint8), "test_labels": np.arange(2)},
         r"test_images are \[5, 5, 1\], train_images \[4, 4, 1\]"),
        ({"train_labels": np.arange(6)}, r"lacks train_images"),
    ],
)  # fmt: skip
def test_bad_npz_is_one_line_naming_the_array(tmp_path, arrays, message):
    name = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        ip.check_dataset(name)


def test_bad_folders_name_the_folder_or_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _write_png(tmp_path / "a" / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"class folder 'b' holds no image file"):
        ip.check_dataset(f"folder:{tmp_path}")
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot read image .*b/broken\.png"):
        ip.check_dataset(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match=r"is not a directory"):
        ip.check_dataset(f"folder:{tmp_path / 'missing'}")
