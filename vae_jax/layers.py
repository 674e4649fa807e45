"""Layers with PyTorch semantics: Conv2d, ConvTranspose2d and BatchNorm.

They match `torch.nn.Conv2d`, `torch.nn.ConvTranspose2d` and `torch.nn.BatchNorm2d` with
padding 0, in NHWC layout:

* kernels are stored HWIO, `kernel[kh, kw, in, out]`; a PyTorch Conv2d weight (out, in, kH, kW)
  maps to it by `permute(2, 3, 1, 0)`, a ConvTranspose2d weight (in, out, kH, kW) by
  `permute(2, 3, 0, 1)`. The transposed convolution is the gradient of a convolution (each
  input pixel scatters `x[i, j] * kernel` into the output at `(stride*i, stride*j)`); no
  kernel flip is needed when importing PyTorch weights.
* initialisation follows PyTorch's defaults: weights and biases uniform in
  ±1/sqrt(fan_in), where fan_in is in·kH·kW for Conv2d and, as PyTorch computes it from the
  weight's second axis, out·kH·kW for ConvTranspose2d.
* BatchNorm normalises with the biased batch variance and updates the running variance
  with the unbiased one, as PyTorch does (Flax's `nn.BatchNorm` uses the biased one).

Two implementations compute each convolution: XLA's own convolution (`"xla"`), and a
matrix multiply plus strided placement with `lax.pad` (`"matmul"`), which is several times
faster for training on XLA:CPU, whose transposed and backward convolutions are slow. The
default `"auto"` takes `"matmul"` on CPU and `"xla"` elsewhere. Both give the same result
within float32 rounding (tests/test_layers.py).
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

Implementation = Literal["auto", "xla", "matmul"]
IMPLEMENTATIONS = ("auto", "xla", "matmul")


def torch_uniform_init(fan_in: int):
    """PyTorch's default initialiser for conv weights and biases: U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def resolve_implementation(implementation: Implementation) -> str:
    """`"auto"` becomes `"matmul"` on the CPU backend and `"xla"` on GPU/TPU."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "xla"
    return implementation


def _output_size(size: int, kernel: int, stride: int) -> int:
    return (size - 1) * stride + kernel


def _place_blocks(blocks: jax.Array, stride: int) -> jax.Array:
    """Sums kernel-offset blocks into the transposed-convolution output ("col2im").

    blocks: (B, H, W, kH, kW, C), the contribution of input pixel (i, j) at kernel offset
    (p, q). Returns (B, (H-1)*stride+kH, (W-1)*stride+kW, C) with
    `out[b, stride*i+p, stride*j+q] += blocks[b, i, j, p, q]`.
    """
    _, _, _, kernel_h, kernel_w, _ = blocks.shape
    zero = jnp.zeros((), blocks.dtype)
    out = None
    for p in range(kernel_h):
        for q in range(kernel_w):
            placed = lax.pad(
                blocks[:, :, :, p, q, :], zero,
                [(0, 0, 0), (p, kernel_h - 1 - p, stride - 1),
                 (q, kernel_w - 1 - q, stride - 1), (0, 0, 0)])
            out = placed if out is None else out + placed
    return out


def conv_transpose_matmul(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """PyTorch ConvTranspose2d (padding 0, no bias) as one matmul plus col2im.

    x: (B, H, W, Cin); kernel: (kH, kW, Cin, Cout). Returns (B, Ho, Wo, Cout), with
    Ho = (H-1)*stride + kH.
    """
    batch, height, width, in_features = x.shape
    kernel_h, kernel_w, _, out_features = kernel.shape
    weights = kernel.transpose(2, 0, 1, 3).reshape(in_features, -1)
    blocks = (x.reshape(-1, in_features) @ weights).reshape(
        batch, height, width, kernel_h, kernel_w, out_features)
    return _place_blocks(blocks, stride)


def conv_transpose_xla(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The same as `conv_transpose_matmul`, through `lax.conv_transpose`.

    `lax.conv_transpose` without `transpose_kernel` correlates the dilated input with the
    kernel, so PyTorch's scatter semantics need the kernel flipped spatially.
    """
    return lax.conv_transpose(
        x, kernel[::-1, ::-1], (stride, stride), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_matmul(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """PyTorch Conv2d (padding 0, no bias) as strided patches ("im2col") and one matmul.

    x: (B, H, W, Cin); kernel: (kH, kW, Cin, Cout). Returns (B, Ho, Wo, Cout), with
    Ho = (H - kH) // stride + 1.
    """
    kernel_h, kernel_w, in_features, out_features = kernel.shape
    out_h = (x.shape[1] - kernel_h) // stride + 1
    out_w = (x.shape[2] - kernel_w) // stride + 1
    patches = jnp.stack(
        [x[:, p:p + stride * (out_h - 1) + 1:stride, q:q + stride * (out_w - 1) + 1:stride, :]
         for p in range(kernel_h) for q in range(kernel_w)], axis=3)
    patches = patches.reshape(x.shape[0], out_h, out_w, kernel_h * kernel_w * in_features)
    return patches @ kernel.reshape(-1, out_features)


def conv_xla(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The same as `conv_matmul`, through `lax.conv_general_dilated`."""
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Conv2d(nn.Module):
    """`torch.nn.Conv2d(in, features, kernel_size, stride, padding=0)` in NHWC.

    (B, H, W, Cin) -> (B, (H - kernel_size) // stride + 1, ..., features).
    """

    features: int
    kernel_size: int
    stride: int = 1
    implementation: Implementation = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        fan_in = in_features * self.kernel_size ** 2
        kernel = self.param(
            "kernel", torch_uniform_init(fan_in),
            (self.kernel_size, self.kernel_size, in_features, self.features))
        bias = self.param("bias", torch_uniform_init(fan_in), (self.features,))
        conv = conv_matmul if resolve_implementation(self.implementation) == "matmul" else conv_xla
        return conv(x, kernel, self.stride) + bias


class ConvTranspose2d(nn.Module):
    """`torch.nn.ConvTranspose2d(in, features, kernel_size, stride, padding=0)` in NHWC.

    (B, H, W, Cin) -> (B, (H-1)*stride + kernel_size, ..., features).
    """

    features: int
    kernel_size: int
    stride: int = 1
    implementation: Implementation = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        fan_in = self.features * self.kernel_size ** 2  # PyTorch's fan_in for this weight.
        kernel = self.param(
            "kernel", torch_uniform_init(fan_in),
            (self.kernel_size, self.kernel_size, in_features, self.features))
        bias = self.param("bias", torch_uniform_init(fan_in), (self.features,))
        if resolve_implementation(self.implementation) == "matmul":
            return conv_transpose_matmul(x, kernel, self.stride) + bias
        return conv_transpose_xla(x, kernel, self.stride) + bias


class BatchNorm(nn.Module):
    """`torch.nn.BatchNorm2d` over the last axis: batch statistics when `train`, else running ones.

    Variables: params `scale` (ones), `bias` (zeros); batch_stats `mean` (zeros), `var` (ones).
    In training the running statistics move as `stat = momentum * stat + (1 - momentum) * batch`
    (Flax's momentum 0.9 is PyTorch's 0.1), with the unbiased batch variance.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            if not self.is_initializing():
                count = math.prod(x.shape[:-1])
                unbiased_var = var * (count / max(count - 1, 1))
                running_mean.value = (self.momentum * running_mean.value
                                      + (1 - self.momentum) * mean)
                running_var.value = (self.momentum * running_var.value
                                     + (1 - self.momentum) * unbiased_var)
        else:
            mean, var = running_mean.value, running_var.value
        return (x - mean) * (scale * lax.rsqrt(var + self.epsilon)) + bias
