"""Tests for robust_losses_jax.corruption: exact counts, maps, statistics, determinism, errors."""

from __future__ import annotations

import functools
import itertools
import math

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from robust_losses_jax import corruption

# Few distinct sizes: each new N compiles the corruption once per kind (about a second).
SIZES = (1, 7, 100, 1000)
RATES = (0.0, 0.1, 0.25, 0.35, 0.5, 0.8, 0.999, 0.9999)
JITTED = jax.jit(corruption.corrupt_labels, static_argnames=("num_classes", "kind"))


def random_labels(seed, n, num_classes):
    return np.random.default_rng(seed).integers(0, num_classes, size=n).astype(np.int32)


def key(seed=0):
    return jax.random.key(seed)


def as_numpy(noisy, is_corrupted):
    chex.assert_shape([noisy, is_corrupted], (noisy.shape[0],))
    chex.assert_type([noisy, is_corrupted], [jnp.int32, jnp.bool_])
    return np.asarray(noisy), np.asarray(is_corrupted)


def cifar10_map_array():
    return np.asarray(corruption.asymmetric_map_array(corruption.CIFAR10_ASYMMETRIC_MAP, 10))


# --------------------------------------------------------------------------------------------------
# The class tables and the asymmetric maps.
# --------------------------------------------------------------------------------------------------

# Fine -> coarse label of CIFAR-100, as published with the dataset's hierarchy (the widely copied
# `sparse2coarse` table): an independent check of the table built from the superclass lists.
CIFAR100_COARSE_REFERENCE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]  # fmt: skip


def test_cifar100_tables():
    fine = corruption.CIFAR100_FINE_CLASSES
    assert len(fine) == 100 and list(fine) == sorted(fine)  # The label order is alphabetical.
    assert fine[:8] == ("apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle")
    members = [name for group in corruption.CIFAR100_SUPERCLASSES.values() for name in group]
    assert sorted(members) == list(fine)  # Every fine class in exactly one superclass.
    assert len(corruption.CIFAR100_COARSE_CLASSES) == 20
    assert list(corruption.CIFAR100_COARSE_CLASSES) == sorted(corruption.CIFAR100_COARSE_CLASSES)
    coarse = np.asarray(corruption.CIFAR100_FINE_TO_COARSE)
    np.testing.assert_array_equal(coarse, CIFAR100_COARSE_REFERENCE)
    np.testing.assert_array_equal(np.bincount(coarse, minlength=20), np.full(20, 5))


def test_cifar100_map_cycles_within_superclasses():
    mapping = corruption.asymmetric_map_for("cifar100")
    coarse = corruption.CIFAR100_FINE_TO_COARSE
    assert sorted(mapping) == list(range(100)) and sorted(mapping.values()) == list(range(100))
    for source, target in mapping.items():
        assert source != target and coarse[source] == coarse[target]
    # Each class returns to itself after exactly 5 steps: one 5-cycle per superclass.
    for start in range(100):
        path = [start]
        for _ in range(5):
            path.append(mapping[path[-1]])
        assert path[-1] == start and len(set(path[:-1])) == 5
    name = corruption.CIFAR100_FINE_CLASSES.index
    cycle = ["beaver", "dolphin", "otter", "seal", "whale", "beaver"]
    assert all(mapping[name(a)] == name(b) for a, b in itertools.pairwise(cycle))
    assert mapping[name("maple_tree")] == name("oak_tree")
    assert mapping[name("tractor")] == name("lawn_mower")


EXPECTED_MAPS = {  # By class name, as documented.
    "mnist": (corruption.MNIST_CLASSES, {"2": "7", "3": "8", "5": "6", "6": "5", "7": "1"}),
    "fashion_mnist": (
        corruption.FASHION_MNIST_CLASSES,
        {"T-shirt/top": "Shirt", "Shirt": "T-shirt/top", "Pullover": "Coat", "Coat": "Pullover",
         "Sandal": "Sneaker", "Sneaker": "Ankle boot"},
    ),
    "cifar10": (
        corruption.CIFAR10_CLASSES,
        {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("dataset", sorted(EXPECTED_MAPS))
def test_small_maps_by_class_name(dataset):
    names, expected = EXPECTED_MAPS[dataset]
    mapping = corruption.asymmetric_map_for(dataset)
    assert {names[s]: names[t] for s, t in mapping.items()} == expected


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_maps_are_valid(dataset):
    mapping = corruption.asymmetric_map_for(dataset)
    num_classes = 100 if dataset == "cifar100" else 10
    for source, target in mapping.items():
        assert 0 <= source < num_classes and 0 <= target < num_classes and source != target
    array = np.asarray(corruption.asymmetric_map_array(mapping, num_classes))
    chex.assert_shape(array, (num_classes,))
    assert all(array[c] == mapping.get(c, c) for c in range(num_classes))


def test_asymmetric_map_for_returns_a_fresh_dict():
    mapping = corruption.asymmetric_map_for("cifar10")
    mapping[0] = 1
    assert 0 not in corruption.asymmetric_map_for("cifar10")
    with pytest.raises(TypeError):
        corruption.CIFAR10_ASYMMETRIC_MAP[0] = 1  # Read-only.


# --------------------------------------------------------------------------------------------------
# Symmetric noise.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
def test_symmetric_exact_count_and_real_flips(n):
    num_classes = 10
    labels = random_labels(n, n, num_classes)
    for i, rate in enumerate(RATES):
        noisy, flipped = as_numpy(*corruption.corrupt_labels(key(i), labels, num_classes, rate))
        assert flipped.sum() == round(rate * n), (n, rate)
        np.testing.assert_array_equal(flipped, noisy != labels)
        np.testing.assert_array_equal(noisy[~flipped], labels[~flipped])
        assert np.all((noisy >= 0) & (noisy < num_classes))


def test_symmetric_round_is_half_to_even():
    labels = random_labels(0, 100, 3)
    # 0.125 * 100 = 12.5 -> 12 and 0.135 * 100 = 13.5 -> 14 (Python's round).
    for rate, want in [(0.125, 12), (0.135, 14), (0.005, 0), (0.995, 100)]:
        assert corruption.corrupt_labels(key(), labels, 3, rate)[1].sum() == want


def test_empty_split():
    empty = np.zeros(0, np.int32)
    noisy, flipped = as_numpy(*corruption.corrupt_labels(key(), empty, 3, 0.5))
    assert noisy.size == 0 and flipped.size == 0


def test_symmetric_flips_are_uniform():
    """New labels: uniform over the other classes. Flipped examples: uniform over the split."""
    n, num_classes, rate = 20_000, 5, 0.9
    labels = random_labels(1, n, num_classes)
    noisy, flipped = as_numpy(*corruption.corrupt_labels(key(1), labels, num_classes, rate))
    counts = corruption.noise_report(labels, noisy, num_classes)["counts"]
    for c in range(num_classes):
        others = np.delete(counts[c], c)
        assert stats.chisquare(others).pvalue > 1e-4, (c, others)
    # Flip fraction per block of the index range, and per class: all about `rate`.
    blocks = flipped.reshape(20, -1).sum(axis=1)
    assert stats.chisquare(blocks).pvalue > 1e-4, blocks
    per_class = np.array([flipped[labels == c].mean() for c in range(num_classes)])
    np.testing.assert_allclose(per_class, rate, atol=0.02)


@st.composite
def symmetric_cases(draw):
    n = draw(st.sampled_from(SIZES))  # Sizes compiled above already.
    num_classes = draw(st.integers(2, 40))
    rate = draw(st.floats(0.0, 1.0, exclude_max=True))
    labels = np.asarray(
        draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)), np.int32
    )
    return draw(st.integers(0, 2**31 - 1)), labels, num_classes, rate


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(symmetric_cases())
def test_property_symmetric_exact_count_no_same_label(case):
    seed, labels, num_classes, rate = case
    noisy, flipped = as_numpy(*corruption.corrupt_labels(key(seed), labels, num_classes, rate))
    assert flipped.sum() == round(rate * labels.size)
    np.testing.assert_array_equal(flipped, noisy != labels)
    assert np.all((noisy >= 0) & (noisy < num_classes))


# --------------------------------------------------------------------------------------------------
# Asymmetric noise.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45, 0.999])
def test_asymmetric_follows_map_with_exact_class_counts(dataset, rate):
    num_classes = 100 if dataset == "cifar100" else 10
    mapping = corruption.asymmetric_map_for(dataset)
    labels = random_labels(2, 1000, num_classes)
    noisy, flipped = as_numpy(
        *corruption.corrupt_labels(
            key(2), labels, num_classes, rate, "asymmetric", asymmetric_map=mapping
        )
    )
    np.testing.assert_array_equal(flipped, noisy != labels)
    for c in range(num_classes):
        in_class = labels == c
        want = round(rate * in_class.sum()) if c in mapping else 0
        assert flipped[in_class].sum() == want, (c, in_class.sum())
        assert np.all(noisy[in_class & flipped] == mapping.get(c, c))


def test_asymmetric_dict_and_array_maps_agree():
    labels = random_labels(3, 1000, 10)
    args = (key(3), labels, 10, 0.4, "asymmetric")
    from_dict = corruption.corrupt_labels(*args, asymmetric_map=corruption.CIFAR10_ASYMMETRIC_MAP)
    from_array = corruption.corrupt_labels(*args, asymmetric_map=cifar10_map_array())
    chex.assert_trees_all_equal(from_dict, from_array)


def test_asymmetric_choice_is_uniform_within_class():
    """Which cat images flip: spread evenly over the cats' positions in the split."""
    labels = random_labels(4, 20_000, 10)
    _, flipped = as_numpy(
        *corruption.corrupt_labels(
            key(4), labels, 10, 0.5, "asymmetric", asymmetric_map=cifar10_map_array()
        )
    )
    cats = flipped[labels == 3]
    blocks = np.array_split(cats, 10)
    observed = np.array([b.sum() for b in blocks])
    expected = cats.sum() * np.array([b.size for b in blocks]) / cats.size
    assert stats.chisquare(observed, expected).pvalue > 1e-4, observed


# --------------------------------------------------------------------------------------------------
# Transition-matrix noise.
# --------------------------------------------------------------------------------------------------

T4 = np.array(
    [[0.7, 0.1, 0.2, 0.0],
     [0.0, 1.0, 0.0, 0.0],
     [0.25, 0.25, 0.25, 0.25],
     [0.05, 0.0, 0.45, 0.5]],
)  # fmt: skip


def test_transition_frequencies_match_matrix():
    n = 200_000
    labels = random_labels(5, n, 4)
    noisy, flipped = as_numpy(
        *corruption.corrupt_labels(key(5), labels, 4, 0.0, "transition", jnp.asarray(T4))
    )
    np.testing.assert_array_equal(flipped, noisy != labels)
    report = corruption.noise_report(labels, noisy, 4)
    # Zero-probability entries are never drawn; the others are within 5 binomial sigmas.
    np.testing.assert_array_equal(report["counts"][T4 == 0], 0)
    row_sizes = np.bincount(labels, minlength=4)[:, None]
    sigma = np.sqrt(T4 * (1 - T4) / row_sizes)
    assert np.all(np.abs(report["transition"] - T4) <= 5 * sigma + 1e-12)
    want_rate = np.sum(row_sizes[:, 0] * (1 - np.diag(T4))) / n
    assert abs(report["realised_rate"] - want_rate) < 0.005


def test_transition_identity_and_rate_is_unused():
    labels = random_labels(6, 1000, 4)
    noisy, flipped = as_numpy(
        *corruption.corrupt_labels(key(6), labels, 4, 0.0, "transition", np.eye(4))
    )
    np.testing.assert_array_equal(noisy, labels)
    assert not flipped.any()
    a = corruption.corrupt_labels(key(6), labels, 4, 0.0, "transition", T4)
    b = corruption.corrupt_labels(key(6), labels, 4, 0.5, "transition", T4)
    chex.assert_trees_all_equal(a, b)


# --------------------------------------------------------------------------------------------------
# Determinism: depends only on (key, labels of the whole split).
# --------------------------------------------------------------------------------------------------

KIND_ARGS = {
    "symmetric": ((), {}),
    "asymmetric": ((), {"asymmetric_map": cifar10_map_array()}),
    "transition": ((np.full((10, 10), 0.04) + 0.6 * np.eye(10),), {}),
}


@pytest.mark.parametrize("kind", sorted(KIND_ARGS))
def test_same_key_same_output_different_key_different_flips(kind):
    args, kwargs = KIND_ARGS[kind]
    labels = random_labels(7, 1000, 10)

    def run(k):
        return as_numpy(*corruption.corrupt_labels(k, labels, 10, 0.4, kind, *args, **kwargs))

    first, again, other = run(key(7)), run(key(7)), run(key(8))
    chex.assert_trees_all_equal(first, again)
    assert not np.array_equal(first[1], other[1])
    # The legacy raw key of the same seed is the same key.
    chex.assert_trees_all_equal(first, run(jax.random.PRNGKey(7)))


@pytest.mark.parametrize("kind", sorted(KIND_ARGS))
def test_jit_matches_eager_and_compiles_once(kind):
    args, kwargs = KIND_ARGS[kind]
    labels = random_labels(8, 1000, 10)
    # A fresh function (same signature), so the cache counted is this test's own.
    fresh = functools.wraps(corruption.corrupt_labels)(
        lambda *args, **kwargs: corruption.corrupt_labels(*args, **kwargs)
    )
    jitted = jax.jit(fresh, static_argnames=("num_classes", "kind"))
    # Rates r with r * n never a half-integer, so the float32 traced count equals the float64 one.
    for rate in (0.0, 0.2, 0.4, 0.75):
        args_j = tuple(jnp.asarray(a, jnp.float32) for a in args)
        kwargs_j = {k: jnp.asarray(v) for k, v in kwargs.items()}
        got = jitted(key(8), labels, 10, rate, kind, *args_j, **kwargs_j)
        want = corruption.corrupt_labels(key(8), labels, 10, rate, kind, *args, **kwargs)
        chex.assert_trees_all_equal(got, want)
    assert jitted._cache_size() == 1


def test_jit_with_a_dict_map():
    labels = random_labels(9, 1000, 10)
    mapping = corruption.asymmetric_map_for("cifar10")
    got = JITTED(key(9), labels, 10, 0.4, "asymmetric", asymmetric_map=mapping)
    want = corruption.corrupt_labels(key(9), labels, 10, 0.4, "asymmetric", asymmetric_map=mapping)
    chex.assert_trees_all_equal(got, want)


def test_traced_rate_rounds_in_float32_static_rate_is_exact():
    """The documented caveat: 0.575 * 100 is 57.4999... in float64 but 57.5 in float32."""
    labels = random_labels(9, 100, 10)
    assert corruption.corrupt_labels(key(), labels, 10, 0.575)[1].sum() == round(0.575 * 100) == 57
    assert JITTED(key(), labels, 10, 0.575)[1].sum() == 58
    static_rate = jax.jit(corruption.corrupt_labels, static_argnames=("num_classes", "rate"))
    chex.assert_trees_all_equal(
        static_rate(key(), labels, num_classes=10, rate=0.575),
        corruption.corrupt_labels(key(), labels, 10, 0.575),
    )


def test_subset_is_the_prefix_of_the_whole_split():
    """``--train-size N``: corrupt the whole split, then take the first N (never the reverse)."""
    labels = random_labels(10, 1000, 10)
    noisy, flipped = as_numpy(*corruption.corrupt_labels(key(10), labels, 10, 0.3))
    subset_noisy, subset_flipped = noisy[:100], flipped[:100]
    np.testing.assert_array_equal(subset_flipped, subset_noisy != labels[:100])
    # Corrupting the subset on its own is a different draw: the flips would differ.
    alone = as_numpy(*corruption.corrupt_labels(key(10), labels[:100], 10, 0.3))
    assert not np.array_equal(alone[1], subset_flipped)


def test_symmetric_example_depends_only_on_key_index_and_own_label():
    labels = random_labels(11, 1000, 10)
    relabelled = labels.copy()
    relabelled[::2] = (labels[::2] + 3) % 10  # Change every other example's true label.
    a_noisy, a_flipped = as_numpy(*corruption.corrupt_labels(key(11), labels, 10, 0.3))
    b_noisy, b_flipped = as_numpy(*corruption.corrupt_labels(key(11), relabelled, 10, 0.3))
    np.testing.assert_array_equal(a_flipped, b_flipped)  # Which examples: from the key only.
    np.testing.assert_array_equal(a_noisy[1::2], b_noisy[1::2])  # Untouched examples: identical.
    # The offset from the true label comes from (key, index) alone.
    np.testing.assert_array_equal((a_noisy - labels) % 10, (b_noisy - relabelled) % 10)


# --------------------------------------------------------------------------------------------------
# noise_report.
# --------------------------------------------------------------------------------------------------


def test_noise_report_hand_built():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    noisy = np.array([0, 1, 0, 1, 0, 2, 2, 2])
    report = corruption.noise_report(labels, jnp.asarray(noisy), num_classes=4)
    assert report["num_corrupted"] == 2 and isinstance(report["num_corrupted"], int)
    assert report["realised_rate"] == 0.25 and isinstance(report["realised_rate"], float)
    np.testing.assert_array_equal(
        report["counts"], [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0]]
    )
    np.testing.assert_allclose(
        report["transition"],
        [[2 / 3, 1 / 3, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]],  # Class 3: empty.
    )


def test_noise_report_matches_corruption():
    labels = random_labels(12, 1000, 10)
    noisy, flipped = as_numpy(*corruption.corrupt_labels(key(12), labels, 10, 0.35))
    report = corruption.noise_report(labels, noisy, 10)
    assert report["num_corrupted"] == flipped.sum() == 350
    assert math.isclose(report["realised_rate"], 0.35)
    assert np.all(np.diag(report["counts"]) == np.bincount(labels[~flipped], minlength=10))
    np.testing.assert_allclose(report["transition"].sum(axis=1), 1.0)


# --------------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------------

LABELS = np.array([0, 1, 2, 1], np.int32)
C = corruption


def corrupt(**overrides):
    kwargs = {"key": key(), "labels": LABELS, "num_classes": 3, "rate": 0.2} | overrides
    return corruption.corrupt_labels(**kwargs)


BAD_ARGUMENTS = [
    (lambda: corrupt(rate=1.0), r"rate=1.0 is outside its domain; allowed: 0 <= rate < 1"),
    (lambda: corrupt(rate=-0.1), r"rate=-0.1 is outside .*0 <= rate < 1"),
    (lambda: corrupt(rate=math.nan), r"rate=nan is outside .*0 <= rate < 1"),
    (lambda: corrupt(rate=np.array([0.1, 0.2])), r"rate must be a scalar, got shape \(2,\)"),
    (lambda: corrupt(kind="uniform"),
     r"Unknown kind 'uniform'; available: symmetric, asymmetric, transition"),
    (lambda: corrupt(num_classes=1), r"num_classes=1 must be an integer >= 2"),
    (lambda: corrupt(num_classes=2.0), r"num_classes=2.0 must be an integer >= 2"),
    (lambda: corrupt(labels=np.array([0, 3, 1])), r"labels\[1\]=3 is outside \[0, num_classes=3\)"),
    (lambda: corrupt(labels=np.array([0, -1])), r"labels\[1\]=-1 is outside \[0, num_classes=3\)"),
    (lambda: corrupt(labels=np.array([0.0, 1.0])), r"labels must be an integer array, got .*float"),
    (lambda: corrupt(labels=np.zeros((2, 2), int)), r"labels must have shape \[N\], got \[2, 2\]"),
    (lambda: corrupt(kind="transition"), r"kind='transition' needs a transition matrix"),
    (lambda: corrupt(kind="transition", transition=np.eye(4)),
     r"transition must have shape \[num_classes, num_classes\] = \[3, 3\]; got \[4, 4\]"),
    (lambda: corrupt(kind="transition", transition=[[1, 0, 0], [-0.1, 1.1, 0], [0, 0, 1]]),
     r"transition row 1 has a negative or NaN entry"),
    (lambda: corrupt(kind="transition", transition=[[1, 0, 0], [0, 1, 0], [0, 0.5, 0.4]]),
     r"transition row 2 sums to 0.9.*rows must sum to 1 \(atol 1e-06\)"),
    (lambda: corrupt(kind="transition", transition=[[1, 0, 0], [np.nan, 1, 0], [0, 0, 1]]),
     r"transition row 1 has a negative or NaN entry"),
    (lambda: corrupt(transition=np.eye(3)),
     r"transition is only used by kind='transition', not kind='symmetric'"),
    (lambda: corrupt(kind="asymmetric"), r"kind='asymmetric' needs asymmetric_map="),
    (lambda: corrupt(asymmetric_map={0: 1}),
     r"asymmetric_map is only used by kind='asymmetric', not kind='symmetric'"),
    (lambda: corrupt(kind="asymmetric", asymmetric_map={1: 1}),
     r"asymmetric_map maps class 1 to itself"),
    (lambda: corrupt(kind="asymmetric", asymmetric_map={0: 3}),
     r"asymmetric_map: class 0 -> 3, outside \[0, 3\)"),
    (lambda: corrupt(kind="asymmetric", asymmetric_map={5: 1}),
     r"asymmetric_map: source class 5 is outside \[0, 3\)"),
    (lambda: corrupt(kind="asymmetric", asymmetric_map=np.array([1, 0])),
     r"asymmetric_map array must have shape \[num_classes\] = \[3\]; got \[2\]"),
    (lambda: corrupt(kind="asymmetric", asymmetric_map=np.array([1.0, 0.0, 2.0])),
     r"asymmetric_map array must be integer"),
    (lambda: corrupt(kind="asymmetric", asymmetric_map=np.array([1, 0, 7])),
     r"asymmetric_map\[2\]=7 is outside \[0, 3\)"),
    (lambda: C.asymmetric_map_for("imagenet"),
     r"No asymmetric map for dataset 'imagenet'; known: mnist, fashion_mnist, cifar10, cifar100"),
    (lambda: C.noise_report([0, 1], [0], 3),
     r"labels and noisy_labels must both have shape \[N\]; got \[2\] and \[1\]"),
    (lambda: C.noise_report([0, 1], [0, 4], 3),
     r"noisy_labels\[1\]=4 is outside \[0, num_classes=3\)"),
    (lambda: C.noise_report([0.0], [0], 3), r"labels must be an integer array"),
]  # fmt: skip


@pytest.mark.parametrize("call,message", BAD_ARGUMENTS)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------------------------------
# Property tests: transition-matrix and asymmetric noise on random problems.
# --------------------------------------------------------------------------------------------------

# Every new (N, C) compiles the transition and asymmetric corruptions once (about a second on the
# CI machine), so N comes from a few sizes; C is free in [2, 12]. PREFIX is one of the sizes.
PROPERTY_SIZES = (0, 7, 100)
PREFIX = 7
seeds = st.integers(0, 2**31 - 1)


def labels_of(num_classes, n):
    return hnp.arrays(np.int32, n, elements=st.integers(0, num_classes - 1))


@st.composite
def stochastic_rows(draw, num_classes, y):
    """Row ``T[y]``: dense, sparse (some zeros), the identity row, or all mass on one class."""
    shape = draw(st.sampled_from(["dense", "sparse", "identity", "one_hot"]))
    if shape == "identity":
        return np.eye(num_classes)[y]
    if shape == "one_hot":
        return np.eye(num_classes)[draw(st.integers(0, num_classes - 1))]
    weights = draw(hnp.arrays(np.float64, num_classes, elements=st.floats(0.01, 1.0)))
    if shape == "sparse":
        keep = draw(hnp.arrays(np.bool_, num_classes))
        keep[draw(st.integers(0, num_classes - 1))] = True
        weights = np.where(keep, weights, 0.0)
    return weights / weights.sum()


@st.composite
def transition_matrices(draw, num_classes):
    """Row-stochastic float64 ``[C, C]``; rows of mixed shapes (:func:`stochastic_rows`)."""
    return np.stack([draw(stochastic_rows(num_classes, y)) for y in range(num_classes)])


@st.composite
def transition_cases(draw, sizes=PROPERTY_SIZES):
    num_classes = draw(st.integers(2, 12))
    labels = draw(labels_of(num_classes, draw(st.sampled_from(sizes))))
    return draw(seeds), labels, num_classes, draw(transition_matrices(num_classes))


def corrupt_transition(seed, labels, num_classes, matrix):
    return as_numpy(
        *corruption.corrupt_labels(key(seed), labels, num_classes, 0.0, "transition", matrix)
    )


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(transition_cases())
def test_property_transition_draws_only_allowed_labels(case):
    seed, labels, num_classes, matrix = case
    noisy, flipped = corrupt_transition(seed, labels, num_classes, matrix)
    assert np.all((noisy >= 0) & (noisy < num_classes))
    np.testing.assert_array_equal(flipped, noisy != labels)
    # A label of probability T[y, j] == 0 is never drawn; so an identity row never flips.
    assert np.all(matrix[labels, noisy] > 0), matrix[labels, noisy]
    is_identity_row = np.diagonal(matrix) == 1.0
    assert not flipped[is_identity_row[labels]].any()
    # All-mass-on-j rows always give j.
    certain = matrix.max(axis=1) == 1.0
    np.testing.assert_array_equal(
        noisy[certain[labels]], matrix.argmax(axis=1)[labels][certain[labels]]
    )
    chex.assert_trees_all_equal(
        (noisy, flipped), corrupt_transition(seed, labels, num_classes, matrix)
    )
    report = corruption.noise_report(labels, noisy, num_classes)
    assert report["num_corrupted"] == flipped.sum()
    np.testing.assert_array_equal(report["counts"][matrix == 0], 0)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(transition_cases(sizes=(100,)), st.data())
def test_property_transition_example_depends_on_key_index_and_own_label(case, data):
    """No "which examples" stream: example i's label comes from (key, i, labels[i]) alone, so
    corrupting the first PREFIX examples on their own gives the prefix of the whole split, and
    relabelling the other examples changes nothing here."""
    seed, labels, num_classes, matrix = case
    noisy, flipped = corrupt_transition(seed, labels, num_classes, matrix)
    alone = corrupt_transition(seed, labels[:PREFIX], num_classes, matrix)
    chex.assert_trees_all_equal((noisy[:PREFIX], flipped[:PREFIX]), alone)
    changed = data.draw(hnp.arrays(np.bool_, labels.size), label="changed")
    relabelled = np.where(changed, data.draw(labels_of(num_classes, labels.size)), labels)
    other_noisy, _ = corrupt_transition(seed, relabelled, num_classes, matrix)
    np.testing.assert_array_equal(other_noisy[~changed], noisy[~changed])


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    seed=seeds,
    num_classes=st.integers(2, 12),
    rate=st.floats(0.0, 1.0, exclude_max=True),
    data=st.data(),
)
def test_property_symmetric_subset_keeps_each_flipped_examples_new_label(
    seed, num_classes, rate, data
):
    """Corrupting a prefix on its own draws other flips, but an example flipped both ways gets the
    same new label (from fold_in(fold_in(key, 1), i)); the prefix of the whole is consistent."""
    labels = data.draw(labels_of(num_classes, 100), label="labels")
    noisy, flipped = as_numpy(*corruption.corrupt_labels(key(seed), labels, num_classes, rate))
    alone, alone_flipped = as_numpy(
        *corruption.corrupt_labels(key(seed), labels[:PREFIX], num_classes, rate)
    )
    assert alone_flipped.sum() == round(rate * PREFIX)
    both = flipped[:PREFIX] & alone_flipped
    np.testing.assert_array_equal(noisy[:PREFIX][both], alone[both])
    np.testing.assert_array_equal(flipped[:PREFIX], noisy[:PREFIX] != labels[:PREFIX])


@st.composite
def asymmetric_cases(draw):
    """A random map: any set of source classes (maybe none, maybe all), each to another class."""
    num_classes = draw(st.integers(2, 12))
    labels = draw(labels_of(num_classes, draw(st.sampled_from(PROPERTY_SIZES))))
    sources = sorted(draw(st.sets(st.integers(0, num_classes - 1))))

    def other_class(source):
        return st.integers(0, num_classes - 2).map(lambda t: t + (t >= source))

    mapping = {s: draw(other_class(s)) for s in sources}
    remapped = {s: draw(other_class(s)) for s in sources}  # Same sources, other targets.
    rate = draw(st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.sampled_from(RATES)))
    return draw(seeds), labels, num_classes, rate, mapping, remapped


def corrupt_asymmetric(seed, labels, num_classes, rate, mapping):
    return as_numpy(
        *corruption.corrupt_labels(
            key(seed), labels, num_classes, rate, "asymmetric", asymmetric_map=mapping
        )
    )


@pytest.mark.slow
@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(asymmetric_cases())
def test_property_asymmetric_exact_counts_per_source_class(case):
    seed, labels, num_classes, rate, mapping, remapped = case
    noisy, flipped = corrupt_asymmetric(seed, labels, num_classes, rate, mapping)
    assert np.all((noisy >= 0) & (noisy < num_classes))
    np.testing.assert_array_equal(flipped, noisy != labels)
    np.testing.assert_array_equal(noisy[~flipped], labels[~flipped])
    for c in range(num_classes):
        in_class = labels == c
        want = round(rate * in_class.sum()) if c in mapping else 0  # Python's round.
        assert flipped[in_class].sum() == want, (c, in_class.sum(), rate)
        assert np.all(noisy[in_class & flipped] == mapping.get(c, c))
    target = np.asarray(corruption.asymmetric_map_array(mapping, num_classes))
    again = corrupt_asymmetric(seed, labels, num_classes, rate, target)  # The same map as [C].
    chex.assert_trees_all_equal((noisy, flipped), again)
    # Which examples flip comes from the key and the sources, never from the targets.
    _, other_flipped = corrupt_asymmetric(seed, labels, num_classes, rate, remapped)
    np.testing.assert_array_equal(other_flipped, flipped)


@st.composite
def invalid_transitions(draw):
    """``(matrix, problem, bad row)``: a valid matrix with one row (or the shape) broken."""
    num_classes = draw(st.integers(2, 12))
    matrix = draw(transition_matrices(num_classes))
    row, col = draw(st.integers(0, num_classes - 1)), draw(st.integers(0, num_classes - 1))
    problem = draw(st.sampled_from(["negative", "nan", "row_sum", "not_square", "within_atol"]))
    if problem == "negative":
        matrix[row, col] = -draw(st.floats(1e-12, 10.0))
    elif problem == "nan":
        matrix[row, col] = np.nan
    elif problem == "row_sum":  # Off by more than TRANSITION_ATOL (1e-6), entries still >= 0.
        matrix[row] *= draw(st.one_of(st.floats(0.0, 1 - 1e-5), st.floats(1 + 1e-5, 3.0)))
    elif problem == "within_atol":
        matrix[row] *= 1 + draw(st.floats(-5e-7, 5e-7))
    else:
        matrix = draw(
            st.sampled_from([matrix[:, :-1], matrix[:-1], np.pad(matrix, ((0, 0), (0, 1)))])
        )
    return num_classes, matrix, problem, row


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(invalid_transitions())
def test_property_invalid_transition_raises_naming_row_and_value(case):
    num_classes, matrix, problem, row = case
    labels = np.zeros(PREFIX, np.int32)
    if problem == "within_atol":
        checked = corruption.check_transition(matrix, num_classes)
        chex.assert_type(checked, jnp.float32)
        np.testing.assert_array_equal(checked, matrix.astype(np.float32))
        return
    with pytest.raises(ValueError) as error:
        corruption.corrupt_labels(key(), labels, num_classes, 0.0, "transition", matrix)
    message = str(error.value)
    if problem == "not_square":
        assert f"= [{num_classes}, {num_classes}]; got {list(matrix.shape)}" in message
    elif problem == "row_sum":
        total = float(np.asarray(matrix, np.float64).sum(axis=1)[row])
        assert f"transition row {row} sums to {total!r}; rows must sum to 1" in message
    else:
        assert f"transition row {row} has a negative or NaN entry: " in message
        assert repr(float(matrix[row].min()) if problem == "negative" else np.nan) in message
