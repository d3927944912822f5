"""Layers of the small models that are fast on CPU as well as on accelerators.

XLA's CPU backend is slow at four things the paper's small CNN does every step (measured on
the 2-core CI machine, batch 128, 28x28 inputs; ``benchmarks/bench_layers.py`` prints them):

- the weight gradient of a 3x3 convolution (~1 s for the 32->64 layer, 95% of a step): it is
  lowered as a convolution whose "filter" is the whole 24x24 output gradient. :func:`conv2d`
  computes it instead as an im2col matrix product over chunks of a few examples, which stay in
  cache (~30 ms).
- inside a loop (a ``lax.scan`` epoch), the input gradient of a convolution: JAX writes it with
  the kernel's in/out dimensions swapped (``01oi``), and XLA:CPU runs that on a slow generic
  path there (146 ms against ~10 ms). :func:`conv_input_grad` materialises the swapped kernel,
  so the gradient is an ordinary convolution. :func:`conv_general_dilated` (for ``nn.Conv``, as
  the ResNets use it) does both, for any strides and padding.
- the gradient of ``max_pool`` (``select_and_scatter``, ~90 ms): :func:`max_pool_2x2` is a
  reshape and a max, whose gradient is a compare and a select (~17 ms).
- dropout masks from ``jax.random.bernoulli`` (~85 ms for a 1.2M-element mask, threefry or rbg
  alike): :class:`Dropout` hashes each element's index with two 32-bit words drawn from the
  ``'dropout'`` rng (~2 ms). Masks stay a pure function of the key.

On GPU/TPU ``conv2d`` uses XLA's convolution for both gradients (``matmul_grad='auto'``), since
cuDNN and the TPU compiler do these well.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# Bytes of im2col patches per chunk in the weight gradient: small enough to stay in L2 cache.
_CHUNK_BYTES = 4 << 20


def _xla_conv(x: Array, kernel: Array) -> Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "VALID", dimension_numbers=_DIMENSIONS,
        preferred_element_type=jnp.float32 if x.dtype == jnp.float32 else None,
    )  # fmt: skip


def _chunk_size(batch: int, bytes_per_example: int) -> int:
    """The largest divisor of ``batch`` whose patches fit in ``_CHUNK_BYTES`` (at least 1)."""
    best = 1
    for size in range(1, batch + 1):
        if batch % size == 0 and size * bytes_per_example <= _CHUNK_BYTES:
            best = size
    return best


def conv_kernel_grad(
    x: Array,
    out_grad: Array,
    kernel_shape: tuple[int, ...],
    strides: tuple[int, int] = (1, 1),
    padding: tuple[tuple[int, int], ...] = ((0, 0), (0, 0)),
) -> Array:
    """The gradient of a 2-D convolution (``NHWC``/``HWIO``) with respect to its kernel.

    Args:
      x: the input, ``[B, H, W, Cin]``.
      out_grad: the gradient of the output, ``[B, H', W', Cout]``.
      kernel_shape: ``(kh, kw, Cin, Cout)``.
      strides, padding: the convolution's (``padding``: ``(low, high)`` pairs for H and W).

    Returns:
      ``[kh, kw, Cin, Cout]`` float32:
      ``sum_{b,i,j} xpad[b, s_h i + u, s_w j + v, c] * out_grad[b, i, j, o]``, as an im2col
      matrix product accumulated over chunks of the batch.
    """
    kh, kw, cin, cout = kernel_shape
    sh, sw = strides
    batch, out_h, out_w = out_grad.shape[:3]
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    chunk = _chunk_size(batch, out_h * out_w * kh * kw * cin * x.dtype.itemsize)
    x_chunks = x.reshape(batch // chunk, chunk, *x.shape[1:])
    g_chunks = out_grad.reshape(batch // chunk, chunk, *out_grad.shape[1:])

    def accumulate(total, chunk_pair):
        xc, gc = chunk_pair
        patches = jnp.concatenate(
            [
                xc[:, u : u + sh * (out_h - 1) + 1 : sh, v : v + sw * (out_w - 1) + 1 : sw, :]
                for u in range(kh)
                for v in range(kw)
            ],
            axis=-1,
        )  # [chunk, out_h, out_w, kh * kw * cin], ordered (u, v, c) like the kernel.
        return total + jnp.einsum(
            "bhwk,bhwo->ko", patches, gc, preferred_element_type=jnp.float32
        ), None

    total = jnp.zeros((kh * kw * cin, cout), jnp.float32)
    total, _ = jax.lax.scan(accumulate, total, (x_chunks, g_chunks))
    return total.reshape(kh, kw, cin, cout)


def conv_input_grad(x: Array, kernel: Array, out_grad: Array, **conv_args: Any) -> Array:
    """The gradient of ``lax.conv_general_dilated(x, kernel, **conv_args)`` with respect to ``x``.

    JAX's transpose rule computes it as a convolution of ``out_grad`` with the kernel's input
    and output dimensions swapped in the dimension numbers (an ``01oi`` kernel). Inside a loop
    (``lax.scan``, ``while``) XLA:CPU runs that convolution on a slow generic path (~15x: 146 ms
    against ~10 ms for the small CNN's 32->64 layer, batch 128), because it only inserts the
    transposing copy to its fast ``01io`` form outside loops. Here the swapped kernel is
    materialised first (behind an optimisation barrier, so XLA cannot fold the transpose back
    into the dimension numbers) and the forward convolution is written against it, so its
    transpose is an ordinary ``01io`` convolution.
    """
    dimension_numbers = jax.lax.conv_dimension_numbers(
        x.shape, kernel.shape, conv_args.pop("dimension_numbers", None)
    )
    out_dim, in_dim = dimension_numbers.rhs_spec[:2]
    swapped = jax.lax.optimization_barrier(jnp.swapaxes(kernel, out_dim, in_dim))
    # The same convolution, reading the kernel's output dimension where it now lies.
    numbers = dimension_numbers._replace(
        rhs_spec=(in_dim, out_dim, *dimension_numbers.rhs_spec[2:])
    )
    _, vjp = jax.vjp(
        lambda x_: jax.lax.conv_general_dilated(
            x_, swapped, dimension_numbers=numbers, **conv_args
        ),
        x,
    )
    return vjp(out_grad.astype(x.dtype))[0]


def _conv_args(
    lhs: Array,
    rhs: Array,
    window_strides: Any,
    padding: Any,
    dimension_numbers: Any,
    lhs_dilation: Any = None,
    rhs_dilation: Any = None,
    precision: Any = None,
) -> tuple:
    """``lax.conv_general_dilated``'s keyword arguments, hashable (``(name, value)`` pairs)."""
    return tuple(
        dict(
            window_strides=tuple(window_strides),
            padding=padding if isinstance(padding, str) else tuple(map(tuple, padding)),
            lhs_dilation=None if lhs_dilation is None else tuple(lhs_dilation),
            rhs_dilation=None if rhs_dilation is None else tuple(rhs_dilation),
            dimension_numbers=jax.lax.conv_dimension_numbers(
                lhs.shape, rhs.shape, dimension_numbers
            ),
            precision=precision,
        ).items()
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _loop_safe_conv(x: Array, kernel: Array, conv_args: tuple) -> Array:
    return jax.lax.conv_general_dilated(x, kernel, **dict(conv_args))


def _loop_safe_fwd(x, kernel, conv_args):
    return _loop_safe_conv(x, kernel, conv_args), (x, kernel)


def _loop_safe_bwd(conv_args, residuals, out_grad):
    x, kernel = residuals
    args = dict(conv_args)
    x_grad = conv_input_grad(x, kernel, out_grad, **args)
    numbers = args["dimension_numbers"]
    if (
        numbers == jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _DIMENSIONS)
        and args["lhs_dilation"] in (None, (1, 1))
        and args["rhs_dilation"] in (None, (1, 1))
    ):
        # XLA's own kernel gradient is a convolution whose window is the whole output gradient,
        # slow on CPU (~15x inside loops); an im2col matrix product is not.
        padding = args["padding"]
        if isinstance(padding, str):
            window = (kernel.shape[:2], args["window_strides"])
            padding = tuple(jax.lax.padtype_to_pads(x.shape[1:3], *window, padding))
        kernel_grad = conv_kernel_grad(
            x, out_grad.astype(x.dtype), kernel.shape, args["window_strides"], padding
        )
        return x_grad, kernel_grad.astype(kernel.dtype)
    _, kernel_vjp = jax.vjp(lambda k: jax.lax.conv_general_dilated(x, k, **args), kernel)
    return x_grad, kernel_vjp(out_grad.astype(kernel.dtype))[0]


_loop_safe_conv.defvjp(_loop_safe_fwd, _loop_safe_bwd)


def conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides: Any,
    padding: Any,
    lhs_dilation: Any = None,
    rhs_dilation: Any = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
) -> Array:
    """``lax.conv_general_dilated`` whose gradients stay fast inside loops on CPU.

    A drop-in for ``nn.Conv(conv_general_dilated=...)``: same arguments and values; the
    gradient with respect to ``lhs`` from :func:`conv_input_grad`, and with respect to ``rhs``
    from :func:`conv_kernel_grad` (``NHWC``/``HWIO``, undilated; else XLA's). Grouped
    convolutions and other backends use ``lax.conv_general_dilated`` unchanged.
    """
    conv_args = _conv_args(
        lhs, rhs, window_strides, padding, dimension_numbers, lhs_dilation, rhs_dilation, precision
    )
    if feature_group_count != 1 or jax.default_backend() != "cpu":
        return jax.lax.conv_general_dilated(
            lhs, rhs, feature_group_count=feature_group_count, **dict(conv_args)
        )
    return _loop_safe_conv(lhs, rhs, conv_args)


def conv2d(x: Array, kernel: Array, *, padding: str = "VALID", matmul_grad: str = "auto") -> Array:
    """A stride-1 2-D convolution, ``[B, H, W, Cin] x [kh, kw, Cin, Cout] -> [B, H', W', Cout]``.

    Args:
      padding: ``'VALID'`` or ``'SAME'``.
      matmul_grad: ``'auto'`` (on CPU only), ``'always'`` or ``'never'``: the gradients of
        :func:`conv_general_dilated` (kernel gradient by :func:`conv_kernel_grad`, input
        gradient by :func:`conv_input_grad`) instead of XLA's.
    """
    if padding not in ("VALID", "SAME"):
        raise ValueError(f"padding {padding!r} must be 'VALID' or 'SAME'.")
    if matmul_grad not in ("auto", "always", "never"):
        raise ValueError(f"matmul_grad {matmul_grad!r} must be 'auto', 'always' or 'never'.")
    kh, kw = kernel.shape[:2]
    if padding == "SAME":
        pad = ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0))
        x = jnp.pad(x, pad)
    use_matmul = matmul_grad == "always" or (
        matmul_grad == "auto" and jax.default_backend() == "cpu"
    )
    if use_matmul:
        out = _loop_safe_conv(x, kernel, _conv_args(x, kernel, (1, 1), "VALID", _DIMENSIONS))
    else:
        out = _xla_conv(x, kernel)
    return out.astype(x.dtype)


def sum_over_rows(x: Array, row_width: int = 512) -> Array:
    """``x.sum(axis=all but the last)``, ``[..., C] -> [C]``, in float32.

    XLA:CPU turns a long reduction into a ``reduce-window`` tree on a slow generic path (8.5 ms
    for the small CNN's ``[128, 24, 24, 64]`` bias gradient); summing rows of ``k * C``
    contiguous values (``k * C`` near ``row_width``), then the ``k`` partial sums, runs as a
    vectorised loop (2.9 ms) and is more accurate (shorter running sums).
    """
    channels = x.shape[-1]
    rows = x.size // channels
    per_row = max(d for d in range(1, max(1, row_width // channels) + 1) if rows % d == 0)
    partial = jnp.sum(x.reshape(rows // per_row, per_row * channels), axis=0, dtype=jnp.float32)
    return partial.reshape(per_row, channels).sum(axis=0)


@jax.custom_vjp
def add_bias(x: Array, bias: Array) -> Array:
    """``x + bias`` (``[..., C] + [C]``), whose bias gradient is :func:`sum_over_rows`."""
    return x + bias.astype(x.dtype)


def _add_bias_fwd(x, bias):
    return add_bias(x, bias), bias


def _add_bias_bwd(bias, out_grad):
    return out_grad, sum_over_rows(out_grad).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Conv(nn.Module):
    """A stride-1 convolution with bias, parameterised like ``nn.Conv`` (``kernel``, ``bias``).

    ``[B, H, W, Cin] -> [B, H', W', features]`` in ``dtype``; parameters float32.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    padding: str = "VALID"
    dtype: Any = jnp.float32
    matmul_grad: str = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (*self.kernel_size, x.shape[-1], self.features),
            jnp.float32,
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x = jnp.asarray(x, self.dtype)
        y = conv2d(x, kernel.astype(self.dtype), padding=self.padding, matmul_grad=self.matmul_grad)
        if jax.default_backend() == "cpu":  # Elsewhere XLA's own reduction is fast.
            return add_bias(y, bias)
        return y + bias.astype(self.dtype)


def max_pool_2x2(x: Array) -> Array:
    """2x2 max-pooling, stride 2, ``'VALID'`` (an odd last row/column is dropped).

    ``[B, H, W, C] -> [B, H // 2, W // 2, C]``; the same values as ``nn.max_pool(x, (2, 2),
    strides=(2, 2))``. Where a window holds tied maxima, the gradient is shared among them
    instead of going to the first (after a ReLU the tie is at 0, where the gradient is 0 anyway).
    """
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _mix32(h: Array) -> Array:
    """32-bit avalanche mixer (``lowbias32``, C. Wellons): each input bit flips ~half the output."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def hash_uniform_bits(key: Array, shape: tuple[int, ...], offset: Array | int = 0) -> Array:
    """uint32 ``shape``: a counter-based hash of each element's flat index and two words of ``key``.

    A pure function of ``(key, shape, offset)``; for dropout masks, where ``jax.random.bits``
    costs ~40x more on CPU. ``offset`` is added to the flat index: the bits of rows ``[r, r + n)``
    of a bigger array are ``hash_uniform_bits(key, (n, ...), offset=r * row_size)``, which lets a
    device draw exactly its slice of the mask one device would draw for the whole batch.
    """
    seed = jax.random.bits(key, (2,), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, max(1, math.prod(shape))).reshape(shape)
    index = index + jnp.asarray(offset).astype(jnp.uint32)
    return _mix32(_mix32(index * jnp.uint32(0x9E3779B9) ^ seed[0]) ^ seed[1])


class Dropout(nn.Module):
    """Inverted dropout with hashed masks (see :func:`hash_uniform_bits`); rng ``'dropout'``.

    ``row_offset``: the position of ``x``'s first row in the global batch; with the same key on
    every device, each device then drops exactly what one device with the whole batch would.
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool, row_offset: Array | int = 0) -> Array:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"dropout rate {self.rate!r} must be in [0, 1).")
        if deterministic or self.rate == 0.0:
            return x
        row_size = math.prod(x.shape[1:]) if x.ndim > 1 else 1
        bits = hash_uniform_bits(self.make_rng("dropout"), x.shape, row_offset * row_size)
        # keep with probability 1 - rate: bits >= rate * 2**32.
        keep = bits >= jnp.uint32(min(int(self.rate * 2**32), 2**32 - 1))
        return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)


__all__ = [
    "Conv",
    "Dropout",
    "add_bias",
    "conv2d",
    "conv_kernel_grad",
    "hash_uniform_bits",
    "max_pool_2x2",
    "sum_over_rows",
]
