"""Tests for robust_losses_jax.models: shapes, dtypes, parameter counts, cross-device BatchNorm."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from robust_losses_jax import models

NUM_DEVICES = 8
SMALL = ("small_cnn", "mlp", "resnet_tiny")
IMAGE = (28, 28, 1)  # The concrete tests share MNIST-sized inputs, so each model is built once.


def init(model, x):
    return model.init(jax.random.key(0), x, train=False)


def abstract_init(model, shape):
    """Variables' shapes and dtypes, without computing them (ResNet-50 in well under a second)."""
    return jax.eval_shape(lambda: init(model, jnp.zeros(shape)))


@functools.cache
def variables_of(name):
    """``get_model(name, 10)``'s variables for ``IMAGE`` inputs (any dtype: params are float32)."""
    model = models.get_model(name, 10)
    # Compiled once, instead of flax's op-by-op init: the tests' biggest cost on CPU.
    return jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(0), jnp.zeros((1, *IMAGE))
    )


def images(batch, key=1, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(key), (batch, *IMAGE)).astype(dtype)


def train_apply(model, variables, x, dropout_key=None):
    """A train-mode forward pass: ``(logits, {"batch_stats": ...})``, ``{}`` without BatchNorm."""
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    if models.has_batch_norm(model):
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
    return model.apply(variables, x, train=True, rngs=rngs), {}


# --------------------------------------------------------------------------------------------------
# Parameter counts and shapes.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,shape,expected",
    [
        # kuangliu/pytorch-cifar's ResNets (trainable: BatchNorm scale and bias, not its stats).
        ("resnet18", (1, 32, 32, 3), 11_173_962),
        ("resnet34", (1, 32, 32, 3), 21_282_122),
        ("resnet50", (1, 32, 32, 3), 23_520_842),
        # Keras MNIST CNN: 320 + 18,496 + 12*12*64*128 + 128 + 1,290.
        ("small_cnn", (1, 28, 28, 1), 1_199_882),
        # 784*512 + 512 + 512*256 + 256 + 256*10 + 10.
        ("mlp", (1, 28, 28, 1), 535_818),
    ],
)
def test_parameter_counts(name, shape, expected):
    variables = abstract_init(models.get_model(name, 10), shape)
    assert models.count_params(variables["params"]) == expected


def test_resnet_param_count_does_not_depend_on_input_size():
    """Global average pooling: 28x28x3 and 64x64x3 inputs give the same ResNet-18."""
    model = models.get_model("resnet18", 10)
    for shape in [(1, 28, 28, 3), (1, 64, 64, 3)]:
        assert models.count_params(abstract_init(model, shape)["params"]) == 11_173_962


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_large_resnet_output_shapes(name, stem):
    model = models.get_model(name, 7, stem=stem)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: init(model, x), x)
    logits, _ = jax.eval_shape(functools.partial(train_apply, model), variables, x)
    chex.assert_shape(logits, (2, 7))
    chex.assert_type(logits, jnp.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL)
def test_small_model_outputs(name):
    model = models.get_model(name, 10)
    x = images(2)
    eval_logits = model.apply(variables_of(name), x, train=False)
    train_logits, _ = train_apply(model, variables_of(name), x, jax.random.key(2))
    for logits in (eval_logits, train_logits):
        chex.assert_shape(logits, (2, 10))
        chex.assert_type(logits, jnp.float32)
        chex.assert_tree_all_finite(logits)


def abstract_intermediates(model, x):
    """Shapes and dtypes of every submodule's output, in eval mode, without computing them."""

    def run():
        variables = init(model, x)
        return model.apply(variables, x, train=False, capture_intermediates=True)[1]

    return jax.eval_shape(run)["intermediates"]


def test_imagenet_stem_reduces_spatial_size_by_four():
    x = jnp.ones((1, 64, 64, 3))
    sizes = {}
    for stem in ("cifar", "imagenet"):
        intermediates = abstract_intermediates(models.get_model("resnet_tiny", 10, stem=stem), x)
        # The first block has stride 1, so its output has the size the stem hands the stages.
        sizes[stem] = intermediates["ResNetBlock_0"]["__call__"][0].shape
    assert sizes == {"cifar": (1, 64, 64, 8), "imagenet": (1, 16, 16, 8)}


def test_resnet18_stage_shapes_are_the_cifar_resnet():
    """Stages of 64, 128, 256, 512 filters at 32, 16, 8, 4 pixels (two blocks each)."""
    intermediates = abstract_intermediates(
        models.get_model("resnet18", 10), jnp.ones((1, 32, 32, 3))
    )
    shapes = [intermediates[f"ResNetBlock_{i}"]["__call__"][0].shape for i in range(8)]
    assert shapes == [
        (1, s, s, f) for s, f in [(32, 64), (16, 128), (8, 256), (4, 512)] for _ in "ab"
    ]


def test_stems_have_the_published_first_convs():
    for stem, kernel in [("cifar", (3, 3, 3, 8)), ("imagenet", (7, 7, 3, 8))]:
        params = abstract_init(models.get_model("resnet_tiny", 10, stem=stem), (1, 32, 32, 3))
        chex.assert_shape(params["params"]["conv_init"]["kernel"], kernel)


# --------------------------------------------------------------------------------------------------
# Dtypes.
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL)
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
    model = models.get_model(name, 10, dtype=jnp.bfloat16)
    abstract = abstract_init(model, (1, *IMAGE))
    assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
    # A third float dtype: inputs are cast to the compute dtype whatever they are.
    x = images(2, dtype=jnp.float16)
    logits, updates = train_apply(model, variables_of(name), x, jax.random.key(1))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)
    chex.assert_trees_all_equal_dtypes(
        updates, {k: v for k, v in variables_of(name).items() if k != "params"}
    )
    # The body really computes in bfloat16.
    body = abstract_intermediates(model, x)["Dense_0" if name != "resnet_tiny" else "ResNetBlock_0"]
    chex.assert_type(body["__call__"][0], jnp.bfloat16)


@pytest.mark.parametrize("name", SMALL)
def test_float32_model_accepts_bfloat16_inputs(name):
    model = models.get_model(name, 10)
    logits = jax.eval_shape(
        lambda v: model.apply(v, images(2, dtype=jnp.bfloat16), train=False), variables_of(name)
    )
    chex.assert_type(logits, jnp.float32)


@pytest.mark.slow
def test_bfloat16_logits_close_to_float32():
    x = images(4)
    logits = {
        dtype: models.get_model("resnet_tiny", 10, dtype=dtype).apply(
            variables_of("resnet_tiny"), x, train=False
        )
        for dtype in (jnp.float32, jnp.bfloat16)
    }
    chex.assert_trees_all_close(logits[jnp.bfloat16], logits[jnp.float32], atol=0.05, rtol=0.05)


# --------------------------------------------------------------------------------------------------
# Cross-device BatchNorm.
# --------------------------------------------------------------------------------------------------


def _global_batch():
    assert jax.device_count() == NUM_DEVICES, "tests/conftest.py sets 8 simulated CPU devices."
    x = images(NUM_DEVICES * 2)
    # Each device's rows get a different offset, so per-device and global statistics differ.
    return x + jnp.repeat(jnp.arange(NUM_DEVICES, dtype=jnp.float32), 2)[:, None, None, None]


def _reference():
    """Logits and batch_stats of the whole global batch on one device."""
    x = _global_batch()
    model = models.get_model("resnet_tiny", 10)
    variables = variables_of("resnet_tiny")
    logits, batch_stats = train_apply(model, variables, x)
    return x, variables, logits, batch_stats


def _per_device(tree):
    return [jax.tree.map(lambda leaf, i=i: leaf[i], tree) for i in range(NUM_DEVICES)]


@pytest.mark.slow
def test_pmap_batch_norm_averages_statistics_across_devices():
    x, variables, ref_logits, ref_stats = _reference()
    model = models.get_model("resnet_tiny", 10, bn_axis_name="data")
    step = jax.pmap(functools.partial(train_apply, model), axis_name="data", in_axes=(None, 0))
    logits, stats = step(variables, x.reshape(NUM_DEVICES, 2, *x.shape[1:]))
    per_device = _per_device(stats)
    for device_stats in per_device[1:]:
        chex.assert_trees_all_equal(device_stats, per_device[0])
    chex.assert_trees_all_close(per_device[0], ref_stats, rtol=1e-5, atol=1e-5)
    # Normalized with the global statistics, the logits are those of the global batch too.
    chex.assert_trees_all_close(logits.reshape(ref_logits.shape), ref_logits, rtol=1e-4, atol=1e-4)


def test_pmap_without_axis_name_keeps_per_device_statistics():
    """The control: without bn_axis_name each device normalizes with its own rows' statistics."""
    x, variables, _, ref_stats = _reference()
    model = models.get_model("resnet_tiny", 10)
    step = jax.pmap(functools.partial(train_apply, model), in_axes=(None, 0))
    _, stats = step(variables, x.reshape(NUM_DEVICES, 2, *x.shape[1:]))
    means = [s["batch_stats"]["bn_init"]["mean"] for s in _per_device(stats)]
    assert not np.allclose(means[0], means[1], atol=1e-3)
    assert not np.allclose(means[0], ref_stats["batch_stats"]["bn_init"]["mean"], atol=1e-3)


def test_shard_map_batch_norm_matches_global_batch():
    x, variables, ref_logits, ref_stats = _reference()
    model = models.get_model("resnet_tiny", 10, bn_axis_name="data")
    mesh = jax.make_mesh((NUM_DEVICES,), ("data",))
    step = jax.jit(
        jax.shard_map(
            functools.partial(train_apply, model),
            mesh=mesh,
            in_specs=(P(), P("data")),
            out_specs=(P("data"), P()),
        )
    )
    variables = jax.device_put(variables, NamedSharding(mesh, P()))
    logits, stats = step(variables, jax.device_put(x, NamedSharding(mesh, P("data"))))
    chex.assert_trees_all_close(stats, ref_stats, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Dropout.
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs", [("small_cnn", {}), ("mlp", {"dropout_rate": 0.5})])
def test_dropout_only_in_train_mode(name, kwargs):
    model = models.get_model(name, 10, **kwargs)
    x = images(4)
    variables = variables_of(name)  # The MLP's parameters do not depend on its dropout rate.
    a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    again = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(a, b)
    chex.assert_trees_all_equal(a, again)
    # train=False needs no rng and is deterministic.
    chex.assert_trees_all_equal(
        model.apply(variables, x, train=False), model.apply(variables, x, train=False)
    )


def test_mlp_without_dropout_needs_no_rng():
    model = models.get_model("mlp", 10, hidden_sizes=(16,))
    x = jnp.ones((2, 8, 8, 1))
    variables = init(model, x)
    chex.assert_trees_all_equal(
        model.apply(variables, x, train=True), model.apply(variables, x, train=False)
    )
    assert list(variables["params"]) == ["Dense_0", "head"]


# --------------------------------------------------------------------------------------------------
# Registry.
# --------------------------------------------------------------------------------------------------


def test_available_models():
    assert models.available_models() == (
        "mlp",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet_tiny",
        "small_cnn",
    )


@pytest.mark.parametrize("name", models.available_models())
def test_has_batch_norm_matches_variables(name):
    model = models.get_model(name, 10, bn_axis_name="data")
    variables = abstract_init(model, (1, 32, 32, 3))
    assert models.has_batch_norm(model) == ("batch_stats" in variables)


def test_get_model_passes_fields():
    model = models.get_model(
        "resnet18", 100, dtype=jnp.bfloat16, bn_axis_name="data", stem="imagenet"
    )
    assert isinstance(model, models.ResNet)
    assert (model.num_classes, model.dtype, model.bn_axis_name, model.stem) == (
        100,
        jnp.bfloat16,
        "data",
        "imagenet",
    )
    assert models.get_model("resnet50", 10).block_cls is models.BottleneckResNetBlock
    # Models without BatchNorm take bn_axis_name and ignore it, so a train loop can pass it always.
    assert isinstance(models.get_model("small_cnn", 10, bn_axis_name="data"), models.SmallCNN)
    assert models.get_model("mlp", 10, hidden_sizes=(8, 8)).hidden_sizes == (8, 8)


@pytest.mark.parametrize(
    "name,num_classes,kwargs,message",
    [
        ("resnet19", 10, {}, "Unknown model 'resnet19'; available: mlp, resnet18"),
        ("small_cnn", 1, {}, "num_classes must be at least 2"),
        ("small_cnn", 10, {"stem": "cifar"}, "'small_cnn' does not take stem"),
        ("resnet18", 10, {"stage_sizes": (1,)}, "does not take stage_sizes"),
    ],
)
def test_get_model_errors(name, num_classes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.get_model(name, num_classes, **kwargs)


def test_unknown_stem_raises():
    with pytest.raises(ValueError, match="Unknown stem 'cifar10'; available: cifar, imagenet"):
        abstract_init(models.get_model("resnet_tiny", 10, stem="cifar10"), (1, 32, 32, 3))


def test_count_params_of_arrays():
    assert models.count_params({"a": jnp.zeros((2, 3)), "b": [jnp.zeros(4), jnp.zeros(())]}) == 11
