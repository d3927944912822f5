"""Tests for robust_losses_jax.models.layers: the CPU-fast conv, max-pool and dropout agree with
flax/XLA's own (values and gradients) and hashed dropout masks behave like Bernoulli masks."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_losses_jax.models import layers


def _xla_conv(x, kernel, padding="VALID"):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )  # fmt: skip


@pytest.mark.parametrize(
    "x_shape,kernel_shape,padding",
    [
        ((6, 10, 10, 3), (3, 3, 3, 5), "VALID"),
        ((5, 9, 7, 2), (3, 3, 2, 4), "SAME"),  # Odd batch: chunks of 1 or 5.
        ((4, 8, 8, 4), (2, 3, 4, 3), "SAME"),  # Even kernel: asymmetric SAME padding.
        ((2, 6, 6, 1), (1, 1, 1, 2), "VALID"),
    ],
)
@pytest.mark.slow
@pytest.mark.parametrize("matmul_grad", ["always", "never"])
def test_conv2d_values_and_gradients_match_xla(x_shape, kernel_shape, padding, matmul_grad):
    x = jax.random.normal(jax.random.key(0), x_shape)
    kernel = jax.random.normal(jax.random.key(1), kernel_shape)
    ref = _xla_conv(x, kernel, padding)
    out = jax.jit(lambda x, k: layers.conv2d(x, k, padding=padding, matmul_grad=matmul_grad))(
        x, kernel
    )
    chex.assert_shape(out, ref.shape)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    cotangent = jax.random.normal(jax.random.key(2), ref.shape)

    def objective(conv):
        return lambda x, k: jnp.sum(conv(x, k) * cotangent)

    grads = jax.jit(
        jax.grad(
            objective(lambda x, k: layers.conv2d(x, k, padding=padding, matmul_grad=matmul_grad)),
            (0, 1),
        )
    )(x, kernel)
    ref_grads = jax.grad(objective(lambda x, k: _xla_conv(x, k, padding)), (0, 1))(x, kernel)
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_kernel_grad_is_the_definition():
    """sum_{b,i,j} x[b, i+u, j+v, c] * g[b, i, j, o], in float64 NumPy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 6, 2))
    g = rng.normal(size=(3, 3, 4, 4))
    want = np.zeros((3, 3, 2, 4))
    for u in range(3):
        for v in range(3):
            want[u, v] = np.einsum("bijc,bijo->co", x[:, u : u + 3, v : v + 4], g)
    got = layers.conv_kernel_grad(jnp.float32(x), jnp.float32(g), (3, 3, 2, 4))
    chex.assert_type(got, jnp.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "x_shape,kernel_shape,strides,padding",
    [
        ((2, 9, 9, 3), (3, 3, 3, 4), (1, 1), "SAME"),
        ((2, 9, 9, 3), (3, 3, 3, 4), (2, 2), "SAME"),  # Odd size, stride 2: asymmetric padding.
        ((2, 8, 8, 4), (1, 1, 4, 6), (2, 2), "VALID"),  # A ResNet projection.
        ((2, 12, 12, 3), (7, 7, 3, 5), (2, 2), ((3, 3), (3, 3))),  # The ImageNet stem.
        ((3, 7, 6, 1), (3, 3, 1, 2), (1, 1), ((1, 0), (2, 1))),
    ],
)
@pytest.mark.slow
def test_loop_safe_conv_values_and_gradients_match_xla(x_shape, kernel_shape, strides, padding):
    x = jax.random.normal(jax.random.key(0), x_shape)
    kernel = jax.random.normal(jax.random.key(1), kernel_shape)
    numbers = ("NHWC", "HWIO", "NHWC")

    def xla(x, k):
        return jax.lax.conv_general_dilated(
            x, k, strides, padding, dimension_numbers=numbers,
            precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip

    def ours(x, k):
        return layers.conv_general_dilated(x, k, strides, padding, dimension_numbers=numbers)

    ref = xla(x, kernel)
    np.testing.assert_allclose(jax.jit(ours)(x, kernel), ref, rtol=1e-4, atol=1e-4)
    cotangent = jax.random.normal(jax.random.key(2), ref.shape)
    grads = jax.jit(jax.grad(lambda x, k: jnp.sum(ours(x, k) * cotangent), (0, 1)))(x, kernel)
    ref_grads = jax.grad(lambda x, k: jnp.sum(xla(x, k) * cotangent), (0, 1))(x, kernel)
    for got, want in zip(grads, ref_grads, strict=True):
        chex.assert_equal_shape([got, want])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_nn_conv_with_the_loop_safe_conv_matches_nn_conv():
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    theirs = nn.Conv(4, (3, 3), (2, 2), padding=1)
    ours = nn.Conv(4, (3, 3), (2, 2), padding=1, conv_general_dilated=layers.conv_general_dilated)
    variables = theirs.init(jax.random.key(1), x)

    def loss(module):
        return lambda v: jnp.sum(jnp.sin(module.apply(v, x)))

    np.testing.assert_allclose(
        jax.grad(loss(ours))(variables)["params"]["kernel"],
        jax.grad(loss(theirs))(variables)["params"]["kernel"], rtol=1e-4, atol=1e-4,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's layouts")
@pytest.mark.parametrize("model_name", ["small_cnn", "resnet_tiny"])
def test_gradient_convolutions_inside_a_loop_use_fast_kernel_layouts(model_name):
    """Inside a ``lax.scan`` XLA:CPU keeps the dimension numbers JAX gives a convolution's
    gradients: a swapped-kernel (``01oi``) input gradient or a whole-output-window (``i01o``)
    kernel gradient runs on a slow generic path there (15-40x). The models' convolutions must
    compile to plain ``01io`` kernels only."""
    from robust_losses_jax import models

    model = models.get_model(model_name, 10)
    x = jnp.zeros((8, 28, 28, 1))
    variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x,
                           train=False)  # fmt: skip

    def steps(params, xs):
        def one(params, x):
            grads = jax.grad(
                lambda p: jnp.sum(model.apply({**variables, "params": p}, x, train=False))
            )(params)
            return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), None

        return jax.lax.scan(one, params, xs)[0]

    hlo = jax.jit(steps).lower(variables["params"], jnp.zeros((3, *x.shape))).compile().as_text()
    kernels = [line.split("dim_labels=")[1].split(",")[0] for line in hlo.splitlines()
               if " convolution(" in line]  # fmt: skip
    assert kernels, "no convolutions found in the compiled program"
    assert all("_01io->" in k for k in kernels), kernels


def test_conv_kernel_grad_with_strides_and_padding_is_the_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 8, 3))
    padding, strides = ((1, 2), (0, 1)), (2, 3)
    g = rng.normal(size=(2, 4, 3, 5))  # (7 + 3 - 3) // 2 + 1 = 4, (8 + 1 - 3) // 3 + 1 = 3.
    xpad = np.pad(x, ((0, 0), *padding, (0, 0)))
    want = np.zeros((3, 3, 3, 5))
    for u in range(3):
        for v in range(3):
            window = xpad[:, u : u + 2 * 3 + 1 : 2, v : v + 3 * 2 + 1 : 3]
            want[u, v] = np.einsum("bijc,bijo->co", window, g)
    got = layers.conv_kernel_grad(jnp.float32(x), jnp.float32(g), (3, 3, 3, 5), strides, padding)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv2d_rejects_bad_arguments():
    x, k = jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1))
    with pytest.raises(ValueError, match="padding 'FULL'"):
        layers.conv2d(x, k, padding="FULL")
    with pytest.raises(ValueError, match="matmul_grad 'sometimes'"):
        layers.conv2d(x, k, matmul_grad="sometimes")


def test_conv_module_matches_nn_conv_and_its_parameters():
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
    ours = layers.Conv(4, (3, 3), padding="SAME", matmul_grad="always")
    theirs = nn.Conv(4, (3, 3), padding="SAME")
    variables = theirs.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, variables
    )
    np.testing.assert_allclose(
        ours.apply(variables, x), theirs.apply(variables, x), rtol=1e-5, atol=1e-5
    )


def test_conv_module_in_bfloat16():
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 2))
    conv = layers.Conv(3, dtype=jnp.bfloat16, matmul_grad="always")
    variables = conv.init(jax.random.key(1), x)
    chex.assert_type(variables["params"]["kernel"], jnp.float32)
    out = conv.apply(variables, x)
    chex.assert_type(out, jnp.bfloat16)
    grads = jax.grad(lambda v: jnp.sum(conv.apply(v, x).astype(jnp.float32)))(variables)
    chex.assert_type(grads["params"]["kernel"], jnp.float32)
    chex.assert_tree_all_finite(grads)


@pytest.mark.parametrize("shape", [(3, 8, 8, 2), (2, 7, 9, 1)])
def test_max_pool_matches_flax_values_and_gradients(shape):
    # Distinct values: no ties, so the gradients are the same too.
    x = jax.random.permutation(jax.random.key(0), np.prod(shape)).reshape(shape).astype(jnp.float32)

    def flax_pool(x):
        return nn.max_pool(x, (2, 2), strides=(2, 2))

    np.testing.assert_array_equal(layers.max_pool_2x2(x), flax_pool(x))
    g = jax.random.normal(jax.random.key(1), flax_pool(x).shape)
    ours = jax.vjp(layers.max_pool_2x2, x)[1](g)[0]
    theirs = jax.vjp(flax_pool, x)[1](g)[0]
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_dropout_keeps_the_right_fraction_and_rescales(rate):
    x = jnp.ones((64, 32, 32))
    rngs = {"dropout": jax.random.key(0)}
    out = layers.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
    kept = np.asarray(out) != 0
    n = kept.size
    # Binomial(n, 1 - rate): 5 standard deviations.
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(np.asarray(out)[kept], 1 / (1 - rate), rtol=1e-6)


def test_dropout_masks_are_pure_functions_of_the_key_and_look_independent():
    x = jnp.ones((200, 100))

    def mask(key):
        out = layers.Dropout(0.5).apply({}, x, deterministic=False, rngs={"dropout": key})
        return np.asarray(out) != 0

    a, again, b = mask(jax.random.key(1)), mask(jax.random.key(1)), mask(jax.random.key(2))
    np.testing.assert_array_equal(a, again)
    # Two keys: agreement ~ 1/2; neighbouring elements: correlation ~ 0.
    n = a.size
    assert abs((a == b).mean() - 0.5) < 5 * np.sqrt(0.25 / n)
    flat = a.reshape(-1).astype(float)
    neighbour_corr = np.corrcoef(flat[:-1], flat[1:])[0, 1]
    row_corr = np.corrcoef(a[:-1].reshape(-1), a[1:].reshape(-1))[0, 1]
    assert abs(neighbour_corr) < 0.02 and abs(row_corr) < 0.02


def test_dropout_deterministic_and_bad_rate():
    x = jnp.arange(6.0)
    chex.assert_trees_all_equal(layers.Dropout(0.5).apply({}, x, deterministic=True), x)
    with pytest.raises(ValueError, match=r"dropout rate 1\.0"):
        layers.Dropout(1.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})


def test_hash_bits_are_uniform():
    bits = np.asarray(layers.hash_uniform_bits(jax.random.key(3), (100_000,)))
    chex.assert_type(bits, np.uint32)
    # Each of the 32 bits is set half the time; the top byte is uniform (chi-square, 255 dof).
    ones = np.unpackbits(bits.view(np.uint8)).reshape(-1, 32).mean(0)
    assert np.all(np.abs(ones - 0.5) < 0.01)
    counts = np.bincount(bits >> 24, minlength=256)
    expected = len(bits) / 256
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 360  # p ~ 1e-4 for 255 degrees of freedom.


@pytest.mark.parametrize(
    "shape", [(128, 24, 24, 64), (3, 5, 7, 2), (7, 11, 13), (4, 1000), (1, 1, 1, 3)]
)
def test_sum_over_rows_is_the_sum_over_leading_axes(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    expected = np.asarray(x, np.float64).reshape(-1, shape[-1]).sum(axis=0)
    got = jax.jit(layers.sum_over_rows)(x)
    chex.assert_shape(got, (shape[-1],))
    chex.assert_type(got, jnp.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    # bfloat16 inputs are summed in float32.
    chex.assert_type(layers.sum_over_rows(x.astype(jnp.bfloat16)), jnp.float32)


def test_add_bias_gradients_are_those_of_a_plain_add():
    x = jax.random.normal(jax.random.key(0), (6, 9, 9, 16))
    bias = jax.random.normal(jax.random.key(1), (16,))
    weights = jax.random.normal(jax.random.key(2), x.shape)

    def objective(add):
        return lambda x, b: jnp.sum(jnp.sin(add(x, b)) * weights)

    ours = jax.jit(jax.grad(objective(layers.add_bias), (0, 1)))(x, bias)
    plain = jax.grad(objective(lambda x, b: x + b), (0, 1))(x, bias)
    np.testing.assert_array_equal(layers.add_bias(x, bias), x + bias)
    np.testing.assert_array_equal(ours[0], plain[0])
    np.testing.assert_allclose(ours[1], plain[1], rtol=1e-5, atol=1e-5)


def test_conv_module_gradients_match_nn_conv():
    x = jax.random.normal(jax.random.key(0), (4, 9, 9, 3))
    ours = layers.Conv(8, (3, 3), matmul_grad="always")
    theirs = nn.Conv(8, (3, 3), padding="VALID")
    variables = theirs.init(jax.random.key(1), x)
    target = jax.random.normal(jax.random.key(2), (4, 7, 7, 8))

    def grads(module):
        return jax.grad(lambda v: jnp.sum(jnp.tanh(module.apply(v, x)) * target))(variables)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        grads(ours),
        grads(theirs),
    )
