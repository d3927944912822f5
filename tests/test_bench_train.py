"""benchmarks/bench_train.py's FLOP count (the fraction-of-peak column on accelerators)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import bench_train


def test_jaxpr_flops_counts_convolutions_and_matrix_products():
    x = jnp.zeros((4, 10, 12, 3))
    kernel = jnp.zeros((3, 3, 3, 8))
    weights = jnp.zeros((8, 5))

    def fn(x, kernel, weights):
        y = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        y = jnp.tanh(y)  # Elementwise: not counted.
        return y.mean((1, 2)) @ weights

    conv = 2 * (4 * 10 * 12 * 8) * (3 * 3 * 3)
    dense = 2 * 4 * 8 * 5
    assert bench_train.jaxpr_flops(jax.make_jaxpr(fn)(x, kernel, weights).jaxpr) == conv + dense
    # Nested programs: jit once, a scan of 7 steps seven times.
    nested = jax.jit(lambda w: jax.lax.scan(lambda c, _: (c @ w, None), c, None, length=7)[0])
    c, w = jnp.zeros((2, 6)), jnp.zeros((6, 6))
    assert bench_train.jaxpr_flops(jax.make_jaxpr(nested)(w).jaxpr) == 7 * 2 * 2 * 6 * 6
    # Grouped convolution (a vmapped one): each output sums over its group's inputs only.
    grouped_conv = functools.partial(
        jax.lax.conv_general_dilated, window_strides=(1, 1), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2,
    )  # fmt: skip
    grouped = jax.make_jaxpr(grouped_conv)(jnp.zeros((1, 5, 5, 4)), jnp.zeros((3, 3, 2, 6)))
    assert bench_train.jaxpr_flops(grouped.jaxpr) == 2 * (3 * 3 * 6) * (3 * 3 * 2)


@pytest.mark.parametrize(("model", "shape", "per_example"), [
    ("small_cnn", (28, 28, 1), None),
    ("resnet18", (32, 32, 3), 1.11e9),  # CIFAR ResNet-18: 0.56 G multiply-adds per image.
])  # fmt: skip
@pytest.mark.slow
def test_forward_flops_of_the_benchmarked_models(model, shape, per_example):
    flops = bench_train.forward_flops(model, shape, 2, "float32")
    if per_example:
        np.testing.assert_allclose(flops / 2, per_example, rtol=0.01)
    else:  # Convolutions and dense layers are all of it: XLA's count of the whole program.
        _, state, _ = bench_train.jax_setting(model, shape, "float32", 1)
        net = bench_train.models.get_model(model, 10)
        cost = (
            jax.jit(lambda v, x: net.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}))
            .lower({"params": state.params}, jnp.zeros((2, *shape)))
            .cost_analysis()
        )
        cost = cost[0] if isinstance(cost, list) else cost
        np.testing.assert_allclose(flops, cost["flops"], rtol=0.03)
