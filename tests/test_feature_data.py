"""feature_data: an npz of features read and checked, each bad input one line."""

import numpy as np
import pytest

from robust_losses_jax import feature_data

FEATURES = np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32)
LABELS = np.arange(20) % 3


def saved(tmp_path, **arrays):
    path = tmp_path / "features.npz"
    np.savez(path, **arrays)
    return path


def test_reads_features_labels_names_and_an_optional_test_split(tmp_path):
    path = saved(tmp_path, train_features=FEATURES.astype(np.float64), train_labels=LABELS,
                 test_features=FEATURES[:4], test_labels=LABELS[:4],
                 class_names=np.array(["a", "b", "c"]))  # fmt: skip
    assert feature_data.holds_features(f"npz:{path}")
    data = feature_data.load_features(path)
    assert data.train_features.dtype == np.float32 and data.train_features.shape == (20, 5)
    np.testing.assert_array_equal(data.train_labels, LABELS)
    assert data.test_features.shape == (4, 5) and data.class_names == ("a", "b", "c")
    bare = feature_data.load_features(saved(tmp_path, train_features=FEATURES, train_labels=LABELS))
    assert bare.num_classes == 3 and bare.test_features.shape == (0, 5)


def test_image_npz_and_missing_files_hold_no_features(tmp_path):
    images = saved(tmp_path, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=[0, 1])
    assert not feature_data.holds_features(f"npz:{images}")
    assert not feature_data.holds_features(f"npz:{tmp_path / 'missing.npz'}")
    assert not feature_data.holds_features("fashion_mnist")


NAN = FEATURES.copy()
NAN[3, 2] = np.nan


@pytest.mark.parametrize(
    ("arrays", "message"),
    [({"train_features": NAN, "train_labels": LABELS},
      r"train_features\[3, 2\] = nan; features must be finite \(1 rows are not\)"),
     ({"train_features": FEATURES.astype(np.int64), "train_labels": LABELS},
      r"train_features must be floats \[N, D\] with D >= 1; got int64 \[20, 5\]"),
     ({"train_features": FEATURES[0], "train_labels": LABELS}, r"must be floats \[N, D\]"),
     ({"train_features": FEATURES, "train_labels": LABELS[:19]},
      r"train_labels must be integers \[20\] \(one per row of features\); got int64 \[19\]"),
     ({"train_features": FEATURES, "train_labels": LABELS.astype(np.float32)},
      r"train_labels must be integers"),
     ({"train_features": FEATURES, "train_labels": LABELS, "num_classes": 2},
      r"train_labels\[2\] = 2 is outside \[0, 2\)"),
     ({"train_features": FEATURES, "train_labels": LABELS, "test_features": FEATURES[:, :4],
       "test_labels": LABELS}, r"test_features have 4 columns, train_features 5"),
     ({"train_features": FEATURES, "train_labels": LABELS, "test_features": FEATURES},
      r"only one of test_features and test_labels"),
     ({"train_features": FEATURES}, r"has train_features but no train_labels"),
     ({"train_features": FEATURES, "train_labels": np.zeros(20, int)}, r"1 classes; a dataset")],
)  # fmt: skip
def test_bad_features_are_one_line_naming_the_value(tmp_path, arrays, message):
    with pytest.raises(ValueError, match=message) as error:
        feature_data.load_features(saved(tmp_path, **arrays))
    assert "\n" not in str(error.value)
