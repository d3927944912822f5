"""Layers of the small models that are fast on CPU as well as on accelerators.

XLA's CPU backend is slow at three things the paper's small CNN does every step (measured on
the 2-core CI machine, batch 128, 28x28 inputs; ``benchmarks/bench_layers.py`` prints them):

- the weight gradient of a 3x3 convolution (~1 s for the 32->64 layer, 95% of a step): it is
  lowered as a convolution whose "filter" is the whole 24x24 output gradient. :func:`conv2d`
  computes it instead as an im2col matrix product over chunks of a few examples, which stay in
  cache (~40 ms); the forward pass and the input gradient stay XLA's own convolution.
- the gradient of ``max_pool`` (``select_and_scatter``, ~90 ms): :func:`max_pool_2x2` is a
  reshape and a max, whose gradient is a compare and a select (~17 ms).
- dropout masks from ``jax.random.bernoulli`` (~85 ms for a 1.2M-element mask, threefry or rbg
  alike): :class:`Dropout` hashes each element's index with two 32-bit words drawn from the
  ``'dropout'`` rng (~2 ms). Masks stay a pure function of the key.

On GPU/TPU ``conv2d`` uses XLA's convolution for both gradients (``matmul_grad='auto'``), since
cuDNN and the TPU compiler do these well.
"""

from __future__ import annotations

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


def conv_kernel_grad(x: Array, out_grad: Array, kernel_shape: tuple[int, ...]) -> Array:
    """The gradient of a stride-1 ``'VALID'`` convolution with respect to its kernel.

    Args:
      x: the input, ``[B, H, W, Cin]``.
      out_grad: the gradient of the output, ``[B, H - kh + 1, W - kw + 1, Cout]``.
      kernel_shape: ``(kh, kw, Cin, Cout)``.

    Returns:
      ``[kh, kw, Cin, Cout]`` float32: ``sum_{b,i,j} x[b, i+u, j+v, c] * out_grad[b, i, j, o]``,
      as an im2col matrix product accumulated over chunks of the batch.
    """
    kh, kw, cin, cout = kernel_shape
    batch, out_h, out_w = out_grad.shape[:3]
    chunk = _chunk_size(batch, out_h * out_w * kh * kw * cin * x.dtype.itemsize)
    x_chunks = x.reshape(batch // chunk, chunk, *x.shape[1:])
    g_chunks = out_grad.reshape(batch // chunk, chunk, *out_grad.shape[1:])

    def accumulate(total, chunk_pair):
        xc, gc = chunk_pair
        patches = jnp.concatenate(
            [xc[:, u : u + out_h, v : v + out_w, :] for u in range(kh) for v in range(kw)], axis=-1
        )  # [chunk, out_h, out_w, kh * kw * cin], ordered (u, v, c) like the kernel.
        return total + jnp.einsum(
            "bhwk,bhwo->ko", patches, gc, preferred_element_type=jnp.float32
        ), None

    total = jnp.zeros((kh * kw * cin, cout), jnp.float32)
    total, _ = jax.lax.scan(accumulate, total, (x_chunks, g_chunks))
    return total.reshape(kh, kw, cin, cout)


@jax.custom_vjp
def _conv_matmul_grad(x: Array, kernel: Array) -> Array:
    return _xla_conv(x, kernel)


def _conv_fwd(x, kernel):
    return _xla_conv(x, kernel), (x, kernel)


def _conv_bwd(residuals, out_grad):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, kernel), x)
    (x_grad,) = input_vjp(out_grad.astype(x.dtype))
    kernel_grad = conv_kernel_grad(x, out_grad.astype(x.dtype), kernel.shape)
    return x_grad, kernel_grad.astype(kernel.dtype)


_conv_matmul_grad.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x: Array, kernel: Array, *, padding: str = "VALID", matmul_grad: str = "auto") -> Array:
    """A stride-1 2-D convolution, ``[B, H, W, Cin] x [kh, kw, Cin, Cout] -> [B, H', W', Cout]``.

    Args:
      padding: ``'VALID'`` or ``'SAME'``.
      matmul_grad: ``'auto'`` (on CPU only), ``'always'`` or ``'never'``: compute the kernel
        gradient with :func:`conv_kernel_grad` instead of XLA's convolution.
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
    out = _conv_matmul_grad(x, kernel) if use_matmul else _xla_conv(x, kernel)
    return out.astype(x.dtype)


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
    "conv2d",
    "conv_kernel_grad",
    "hash_uniform_bits",
    "max_pool_2x2",
]
