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

The arithmetic itself is in `vae_jax.kernels`: `implementation` ("auto", "xla", "matmul",
"winograd") picks how the convolutions are computed, all with the same results.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from vae_jax.kernels import convolutions
from vae_jax.kernels.batch_norm import batch_norm_eval, batch_norm_train, updated_running_statistics
from vae_jax.kernels.convolutions import Implementation


def torch_uniform_init(fan_in: int):
    """PyTorch's default initialiser for conv weights and biases: U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


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
        return convolutions.conv(x, kernel, self.stride, self.implementation) + bias


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
        return convolutions.conv_transpose(x, kernel, self.stride, self.implementation) + bias


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
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if train:
            y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
            if not self.is_initializing():
                running_mean.value, running_var.value = updated_running_statistics(
                    running_mean.value, running_var.value, mean, var,
                    math.prod(x.shape[:-1]), self.momentum)
            return y
        return batch_norm_eval(x, scale, bias, running_mean.value, running_var.value,
                               self.epsilon)
