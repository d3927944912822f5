"""Deterministic synthetic label noise: symmetric, asymmetric (class-pair) and transition-matrix.

``corrupt_labels(key, labels, num_classes, rate, kind, ...) -> (noisy_labels, is_corrupted)`` is a
pure, jittable function of the PRNG key and the labels of the *whole* training split in its
canonical order. Every random choice is drawn from the key alone:

- *which* examples flip: one random permutation of ``range(N)`` from ``fold_in(key, 0)``;
- *the new label* of example ``i``: from ``fold_in(fold_in(key, 1), i)``, so it depends only on the
  key, the index ``i`` and the true label ``labels[i]`` (and the map or matrix).

So the same key gives the same noise under ``jit`` or not (and on any backend, for one JAX version:
the PRNG's bits may change between versions), and a training subset (``--train-size N``: the first
N examples after corrupting the whole split) is the prefix ``noisy_labels[:N]``. Never corrupt a
subset on its own: that would change which examples flip.

Kinds:

- ``"symmetric"``: exactly ``round(rate * N)`` examples, uniformly without replacement, each get a
  label drawn uniformly from the *other* ``C - 1`` classes (every flip is a real error).
- ``"asymmetric"``: class-pair flips ``c -> target[c]``; exactly ``round(rate * n_c)`` examples of
  each source class ``c`` (``n_c`` examples), uniformly within the class, are flipped. The standard
  maps are :data:`MNIST_ASYMMETRIC_MAP`, :data:`FASHION_MNIST_ASYMMETRIC_MAP`,
  :data:`CIFAR10_ASYMMETRIC_MAP` and :data:`CIFAR100_ASYMMETRIC_MAP` (see
  :func:`asymmetric_map_for`).
- ``"transition"``: each example's new label is drawn from row ``T[labels[i]]`` of a row-stochastic
  matrix ``T``; it flips with probability ``1 - T[y, y]`` (a random, not exact, number of flips).

``round`` is Python's (half to even). With a concrete ``rate`` the counts are computed in float64
exactly as Python does. A traced ``rate`` (``jit`` without ``static_argnames=("rate", ...)``) is
float32, and ``round(rate * n)`` in float32 can differ by one where ``rate * n`` is within float32
rounding of a half-integer (``rate=0.575, n=100``: 57 concrete, 58 traced); make ``rate`` static
where the exact count matters.

Concrete arguments are validated (``ValueError`` naming the bad value and the allowed range);
traced values cannot be checked and are used as given.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

KINDS = ("symmetric", "asymmetric", "transition")

# fold_in constants of the two independent random streams.
_WHICH_STREAM = 0  # Which examples flip.
_LABEL_STREAM = 1  # The new label of each example.

# Rows of a transition matrix must sum to 1 within this.
TRANSITION_ATOL = 1e-6


# --------------------------------------------------------------------------------------------------
# Class names and the standard asymmetric maps.
# --------------------------------------------------------------------------------------------------

MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# Fine labels in the label order of the original CIFAR-100 files and tfds: alphabetical.
CIFAR100_FINE_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm",
)  # fmt: skip

# The 20 superclasses (coarse labels, alphabetical = their label order) and their 5 fine classes,
# as listed with the dataset (Krizhevsky 2009).
CIFAR100_SUPERCLASSES: Mapping[str, tuple[str, ...]] = types.MappingProxyType({
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
})  # fmt: skip
CIFAR100_COARSE_CLASSES = tuple(CIFAR100_SUPERCLASSES)

# Fine label -> coarse label, [100].
CIFAR100_FINE_TO_COARSE: tuple[int, ...] = tuple(
    next(c for c, members in enumerate(CIFAR100_SUPERCLASSES.values()) if fine in members)
    for fine in CIFAR100_FINE_CLASSES
)


def _cifar100_map() -> dict[int, int]:
    """Each fine class -> the next one of its superclass (fine-label order, cyclic)."""
    mapping = {}
    for members in CIFAR100_SUPERCLASSES.values():
        ids = sorted(CIFAR100_FINE_CLASSES.index(name) for name in members)
        mapping.update({ids[i]: ids[(i + 1) % len(ids)] for i in range(len(ids))})
    return dict(sorted(mapping.items()))


# source class -> target class. Classes that are not keys keep their label.
# MNIST (Patrini et al. 2017): 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1.
MNIST_ASYMMETRIC_MAP: Mapping[int, int] = types.MappingProxyType({2: 7, 3: 8, 5: 6, 6: 5, 7: 1})
# Fashion-MNIST (no standard map; visually confusable pairs): T-shirt/top <-> Shirt (0 <-> 6),
# Pullover <-> Coat (2 <-> 4), Sandal -> Sneaker (5 -> 7), Sneaker -> Ankle boot (7 -> 9).
FASHION_MNIST_ASYMMETRIC_MAP: Mapping[int, int] = types.MappingProxyType(
    {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 7: 9}
)
# CIFAR-10 (Patrini et al. 2017): truck -> automobile (9 -> 1), bird -> airplane (2 -> 0),
# deer -> horse (4 -> 7), cat <-> dog (3 <-> 5).
CIFAR10_ASYMMETRIC_MAP: Mapping[int, int] = types.MappingProxyType({9: 1, 2: 0, 4: 7, 3: 5, 5: 3})
# CIFAR-100: each fine class -> the next fine class of its superclass, cyclic within the 5 (e.g.
# beaver -> dolphin -> otter -> seal -> whale -> beaver). A permutation with no fixed point. (Much
# public code, e.g. Co-teaching's after Patrini et al., cycles within blocks of 5 *consecutive* fine
# labels instead, which in this alphabetical label order are not superclasses.)
CIFAR100_ASYMMETRIC_MAP: Mapping[int, int] = types.MappingProxyType(_cifar100_map())

_ASYMMETRIC_MAPS: dict[str, tuple[int, Mapping[int, int]]] = {
    "mnist": (10, MNIST_ASYMMETRIC_MAP),
    "fashion_mnist": (10, FASHION_MNIST_ASYMMETRIC_MAP),
    "cifar10": (10, CIFAR10_ASYMMETRIC_MAP),
    "cifar100": (100, CIFAR100_ASYMMETRIC_MAP),
}


def asymmetric_map_for(dataset_name: str) -> dict[int, int]:
    """The standard class-pair map ``{source: target}`` of a dataset (a fresh dict).

    Args:
      dataset_name: one of ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``.

    Raises:
      ValueError: unknown name (the message lists the known ones).
    """
    if dataset_name not in _ASYMMETRIC_MAPS:
        raise ValueError(
            f"No asymmetric map for dataset {dataset_name!r}; known: {', '.join(_ASYMMETRIC_MAPS)}."
        )
    return dict(_ASYMMETRIC_MAPS[dataset_name][1])


def asymmetric_map_array(asymmetric_map: Mapping[int, int] | ArrayLike, num_classes: int) -> Array:
    """The map as an int32 array ``[C]`` with ``target[c] == c`` for classes that do not flip.

    Accepts a dict ``{source: target}`` (its values may be traced) or such an array. Concrete
    values are validated: in ``[0, C)``, and a dict never maps a class to itself.
    """
    if isinstance(asymmetric_map, Mapping):
        for source, target in asymmetric_map.items():
            if not isinstance(source, int | np.integer) or not 0 <= source < num_classes:
                raise ValueError(
                    f"asymmetric_map: source class {source!r} is outside [0, {num_classes})."
                )
            if _is_concrete(target):
                if not 0 <= int(target) < num_classes:
                    raise ValueError(
                        f"asymmetric_map: class {source} -> {target!r}, outside [0, {num_classes})."
                    )
                if int(target) == source:
                    raise ValueError(f"asymmetric_map maps class {source} to itself.")
        identity = jnp.arange(num_classes, dtype=jnp.int32)
        if not asymmetric_map:
            return identity
        sources = jnp.asarray(list(asymmetric_map.keys()), jnp.int32)
        targets = jnp.stack([jnp.asarray(t, jnp.int32) for t in asymmetric_map.values()])
        return identity.at[sources].set(targets)

    target = jnp.asarray(asymmetric_map)
    if target.shape != (num_classes,):
        raise ValueError(
            f"asymmetric_map array must have shape [num_classes] = [{num_classes}]; "
            f"got {list(target.shape)}."
        )
    if not jnp.issubdtype(target.dtype, jnp.integer):
        raise ValueError(f"asymmetric_map array must be integer, got dtype {target.dtype}.")
    if _is_concrete(asymmetric_map):
        values = np.asarray(target)
        bad = np.flatnonzero((values < 0) | (values >= num_classes))
        if bad.size:
            c = int(bad[0])
            raise ValueError(f"asymmetric_map[{c}]={int(values[c])} is outside [0, {num_classes}).")
    return target.astype(jnp.int32)


# --------------------------------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------------------------------


def _is_concrete(value: Any) -> bool:
    """False for a traced value (it cannot be checked or read here)."""
    return not isinstance(value, jax.core.Tracer)


def _check_num_classes(num_classes: Any) -> None:
    is_int = isinstance(num_classes, int | np.integer) and not isinstance(num_classes, bool)
    if not is_int or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2.")


def _check_rate(rate: ArrayLike) -> None:
    if np.ndim(rate) != 0:
        raise ValueError(f"rate must be a scalar, got shape {np.shape(rate)}.")
    if _is_concrete(rate):
        value = float(rate)
        if not 0.0 <= value < 1.0:  # NaN fails too.
            raise ValueError(f"rate={rate!r} is outside its domain; allowed: 0 <= rate < 1.")


def _check_labels(labels: ArrayLike, num_classes: int) -> Array:
    """Labels as int32 ``[N]``; concrete values must lie in ``[0, num_classes)``."""
    array = jnp.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must have shape [N], got {list(array.shape)}.")
    if not jnp.issubdtype(array.dtype, jnp.integer):
        raise ValueError(f"labels must be an integer array, got dtype {array.dtype}.")
    if _is_concrete(labels):
        values = np.asarray(labels)
        bad = np.flatnonzero((values < 0) | (values >= num_classes))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"labels[{i}]={int(values[i])} is outside [0, num_classes={num_classes})."
            )
    return array.astype(jnp.int32)


def check_transition(transition: ArrayLike, num_classes: int) -> Array:
    """T as float32 ``[C, C]``; concrete rows must be >= 0 and sum to 1 (else ValueError)."""
    matrix = jnp.asarray(transition)
    if matrix.shape != (num_classes, num_classes):
        raise ValueError(
            f"transition must have shape [num_classes, num_classes] = [{num_classes}, "
            f"{num_classes}]; got {list(matrix.shape)}."
        )
    if _is_concrete(transition):
        values = np.asarray(transition, np.float64)
        bad_rows = np.flatnonzero(~np.all(values >= 0.0, axis=1))  # NaN fails too.
        if bad_rows.size:
            r = int(bad_rows[0])
            raise ValueError(
                f"transition row {r} has a negative or NaN entry: {values[r].tolist()}; "
                "entries must be >= 0."
            )
        sums = values.sum(axis=1)
        bad_rows = np.flatnonzero(np.abs(sums - 1.0) > TRANSITION_ATOL)
        if bad_rows.size:
            r = int(bad_rows[0])
            raise ValueError(
                f"transition row {r} sums to {float(sums[r])!r}; rows must sum to 1 "
                f"(atol {TRANSITION_ATOL})."
            )
    return matrix.astype(jnp.float32)


# --------------------------------------------------------------------------------------------------
# Random building blocks.
# --------------------------------------------------------------------------------------------------


def _example_keys(key: Array, n: int) -> Array:
    """Key of example ``i``: ``fold_in(key, i)``, ``[N]`` keys."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n, dtype=jnp.uint32))


def _random_rank(key: Array, n: int) -> Array:
    """Position of each example in a random permutation of ``range(n)``: int32 ``[N]``."""
    perm = jax.random.permutation(key, n)
    return jnp.zeros(n, jnp.int32).at[perm].set(jnp.arange(n, dtype=jnp.int32))


def _rank_within_class(key: Array, labels: Array, counts: Array) -> Array:
    """Position of each example among its class in a random order: int32 ``[N]`` in ``[0, n_c)``.

    The order inside each class is that of one random permutation of all examples, which makes it
    uniform within every class.
    """
    n = labels.shape[0]
    perm = jax.random.permutation(key, n)
    # Group the permuted examples by class; the stable sort keeps the random order inside a class.
    order = perm[jnp.argsort(labels[perm], stable=True)]
    starts = jnp.cumsum(counts) - counts
    rank_in_order = jnp.arange(n, dtype=jnp.int32) - starts[labels[order]].astype(jnp.int32)
    return jnp.zeros(n, jnp.int32).at[order].set(rank_in_order)


def _flip_counts(rate: ArrayLike, sizes: np.ndarray) -> Array:
    """``round(rate * m)`` for each class size ``m`` in ``sizes``: int32 of ``sizes``' shape.

    A concrete rate is multiplied in float64 on the host, exactly as Python's ``round(rate * m)``;
    a traced one in its own (usually float32) precision.
    """
    sizes = np.asarray(sizes, np.float64)
    if _is_concrete(rate):
        return jnp.asarray(np.round(float(rate) * sizes), jnp.int32)  # np.round: half to even.
    rate = jnp.asarray(rate)
    rate = rate.astype(jnp.promote_types(rate.dtype, jnp.float32))
    return jnp.round(rate * jnp.asarray(sizes, rate.dtype)).astype(jnp.int32)


# One compiled function per kind, so eager calls run compiled too; num_classes is an argument
# where possible, so a new C does not recompile. Under an outer jit they are inlined.


@jax.jit
def _symmetric(key: Array, labels: Array, num_flips: Array, num_classes: Array) -> Array:
    n = labels.shape[0]
    example_keys = _example_keys(jax.random.fold_in(key, _LABEL_STREAM), n)
    flip = _random_rank(jax.random.fold_in(key, _WHICH_STREAM), n) < num_flips
    # An offset in [1, C) from the true label: uniform over the other classes.
    offset = jax.vmap(lambda k: jax.random.randint(k, (), 1, num_classes))(example_keys)
    return jnp.where(flip, (labels + offset) % num_classes, labels)


@jax.jit
def _asymmetric(key: Array, labels: Array, flip_counts: Array, target: Array) -> Array:
    counts = jnp.bincount(labels, length=target.shape[0])
    in_class_rank = _rank_within_class(jax.random.fold_in(key, _WHICH_STREAM), labels, counts)
    num_flips = flip_counts[counts]  # [C]
    flip = (target[labels] != labels) & (in_class_rank < num_flips[labels])
    return jnp.where(flip, target[labels], labels)


@jax.jit
def _transition(key: Array, labels: Array, matrix: Array) -> Array:
    example_keys = _example_keys(jax.random.fold_in(key, _LABEL_STREAM), labels.shape[0])
    log_t = jnp.log(matrix)  # log 0 = -inf: never drawn.
    return jax.vmap(jax.random.categorical)(example_keys, log_t[labels])


# --------------------------------------------------------------------------------------------------
# The corruption.
# --------------------------------------------------------------------------------------------------


def corrupt_labels(
    key: Array,
    labels: ArrayLike,
    num_classes: int,
    rate: ArrayLike,
    kind: str = "symmetric",
    transition: ArrayLike | None = None,
    *,
    asymmetric_map: Mapping[int, int] | ArrayLike | None = None,
) -> tuple[Array, Array]:
    """Corrupt the labels of a whole training split, deterministically from ``key``.

    Jittable as ``jax.jit(corrupt_labels, static_argnames=("num_classes", "kind"))`` with the map
    or matrix passed as arrays (or a dict whose keys are Python ints); see the module docstring for
    the exactness of a traced ``rate``.

    Args:
      key: a JAX PRNG key (``jax.random.key`` or ``PRNGKey``).
      labels: int ``[N]`` in ``[0, num_classes)``: the true labels of the whole split, in canonical
        order (take a subset afterwards, as the prefix of the result).
      num_classes: ``C >= 2``.
      rate: in ``[0, 1)``: the fraction of examples (``symmetric``) or of each source class
        (``asymmetric``) that is flipped. Not used by ``transition`` (``T`` sets the noise), but
        still checked.
      kind: ``"symmetric"``, ``"asymmetric"`` or ``"transition"``.
      transition: for ``kind="transition"`` only: row-stochastic ``[C, C]``, row ``T[y]`` the
        distribution of the new label of an example of class ``y``.
      asymmetric_map: for ``kind="asymmetric"`` only: ``{source: target}`` (see
        :func:`asymmetric_map_for`) or an int array ``[C]`` where ``target[c] == c`` means class
        ``c`` is not a source.

    Returns:
      ``(noisy_labels, is_corrupted)``: int32 ``[N]`` and bool ``[N]``, with
      ``is_corrupted == (noisy_labels != labels)``.

    Raises:
      ValueError: ``num_classes < 2``, unknown ``kind``, ``rate`` outside ``[0, 1)``, labels that
        are not int ``[N]`` in ``[0, num_classes)``, a missing, misshapen or invalid map or matrix,
        or a map or matrix given for a kind that does not use it.
    """
    _check_num_classes(num_classes)
    if kind not in KINDS:
        raise ValueError(f"Unknown kind {kind!r}; available: {', '.join(KINDS)}.")
    labels = _check_labels(labels, num_classes)
    _check_rate(rate)
    if kind == "transition" and transition is None:
        raise ValueError("kind='transition' needs a transition matrix: transition=[C, C].")
    if kind != "transition" and transition is not None:
        raise ValueError(f"transition is only used by kind='transition', not kind={kind!r}.")
    if kind == "asymmetric" and asymmetric_map is None:
        raise ValueError(
            "kind='asymmetric' needs asymmetric_map= (a dict {source: target} or an int array "
            "[C]; see asymmetric_map_for)."
        )
    if kind != "asymmetric" and asymmetric_map is not None:
        raise ValueError(f"asymmetric_map is only used by kind='asymmetric', not kind={kind!r}.")

    n = labels.shape[0]
    if kind == "symmetric":
        num_flips = _flip_counts(rate, np.asarray(n))
        noisy = _symmetric(key, labels, num_flips, jnp.int32(num_classes))
    elif kind == "asymmetric":
        target = asymmetric_map_array(asymmetric_map, num_classes)
        # Indexed by the class counts inside, which may be traced: a table over every size.
        noisy = _asymmetric(key, labels, _flip_counts(rate, np.arange(n + 1)), target)
    else:
        noisy = _transition(key, labels, check_transition(transition, num_classes))
    noisy = noisy.astype(jnp.int32)
    return noisy, noisy != labels


# --------------------------------------------------------------------------------------------------
# What the noise turned out to be.
# --------------------------------------------------------------------------------------------------


def noise_report(labels: ArrayLike, noisy_labels: ArrayLike, num_classes: int) -> dict[str, Any]:
    """The realised noise of a corrupted split (host NumPy).

    Args:
      labels: int ``[N]``, the true labels.
      noisy_labels: int ``[N]``, the labels after corruption.
      num_classes: ``C >= 2``; both arrays must lie in ``[0, C)``.

    Returns:
      ``realised_rate``: float, the fraction of changed labels (0.0 for ``N = 0``);
      ``num_corrupted``: int;
      ``counts``: int64 ``[C, C]``, ``counts[i, j]`` examples of true class ``i`` labelled ``j``;
      ``transition``: float64 ``[C, C]``, ``counts`` with each row divided by its sum (all zero
      for a class with no examples).
    """
    _check_num_classes(num_classes)
    true = np.asarray(labels)
    noisy = np.asarray(noisy_labels)
    if true.shape != noisy.shape or true.ndim != 1:
        raise ValueError(
            f"labels and noisy_labels must both have shape [N]; got {list(true.shape)} and "
            f"{list(noisy.shape)}."
        )
    for name, values in (("labels", true), ("noisy_labels", noisy)):
        if values.size and not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array, got dtype {values.dtype}.")
        bad = np.flatnonzero((values < 0) | (values >= num_classes))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{name}[{i}]={int(values[i])} is outside [0, num_classes={num_classes})."
            )
    true = true.astype(np.int64)
    noisy = noisy.astype(np.int64)
    counts = np.bincount(true * num_classes + noisy, minlength=num_classes**2)
    counts = counts.reshape(num_classes, num_classes).astype(np.int64)
    row_sums = counts.sum(axis=1, keepdims=True)
    transition = np.divide(
        counts, row_sums, out=np.zeros((num_classes, num_classes)), where=row_sums > 0
    )
    num_corrupted = int(np.sum(true != noisy))
    return {
        "realised_rate": num_corrupted / true.size if true.size else 0.0,
        "num_corrupted": num_corrupted,
        "transition": transition,
        "counts": counts,
    }
