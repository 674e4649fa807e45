"""The course's VAE in Flax NNX: the same layers, loss and weights as the linen modules.

`Encoder`, `Decoder` and `VAE` are `flax.nnx.Module`s written natively in NNX (no
`nnx.bridge`): each layer owns its parameters (`nnx.Param`) and BatchNorm statistics
(`nnx.BatchStat`), and the mode is NNX's own: `model.train()` (batch statistics, which the
running averages follow) or `model.eval()` (the running averages). The layers have
PyTorch's semantics, exactly as `vae_jax.model.layers` (padding 0, BatchNorm momentum 0.1 in
PyTorch's convention, epsilon 1e-5, the unbiased running variance) and compute with the same
kernels (`vae_jax.kernels`), so `from_linen(variables)` and `to_linen(model)` move weights
between the two APIs without changing a number.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vae_jax.kernels import convolutions
from vae_jax.kernels.batch_norm import batch_norm_eval, batch_norm_train, updated_running_statistics
from vae_jax.kernels.convolutions import Implementation
from vae_jax.model.layers import torch_uniform_init
from vae_jax.model.vae import IMAGE_SIZE, check_input, reparameterize

# (part, layer) of every layer, in the linen variables' naming: params[part][layer].
CONVOLUTIONS = (("encoder", "conv1"), ("encoder", "conv2"), ("encoder", "conv3"),
                ("decoder", "deconv1"), ("decoder", "deconv2"), ("decoder", "deconv3"),
                ("decoder", "deconv4"))
BATCH_NORMS = (("encoder", "bn1"), ("encoder", "bn2"),
               ("decoder", "bn1"), ("decoder", "bn2"), ("decoder", "bn3"))


class Conv2d(nnx.Module):
    """`torch.nn.Conv2d(in_features, out_features, kernel_size, stride, padding=0)` in NHWC:
    (B, H, W, in) -> (B, (H - kernel_size) // stride + 1, ..., out)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, stride: int = 1,
                 *, implementation: Implementation = "auto", rngs: nnx.Rngs):
        init = torch_uniform_init(in_features * kernel_size ** 2)
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, kernel_size, in_features,
                                                     out_features)))
        self.bias = nnx.Param(init(rngs.params(), (out_features,)))
        self.stride, self.implementation = stride, implementation

    def __call__(self, x: jax.Array) -> jax.Array:
        return convolutions.conv(x, self.kernel.value, self.stride,
                                 self.implementation) + self.bias.value


class ConvTranspose2d(nnx.Module):
    """`torch.nn.ConvTranspose2d(in_features, out_features, kernel_size, stride, padding=0)`
    in NHWC: (B, H, W, in) -> (B, (H - 1) * stride + kernel_size, ..., out)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, stride: int = 1,
                 *, implementation: Implementation = "auto", rngs: nnx.Rngs):
        init = torch_uniform_init(out_features * kernel_size ** 2)  # PyTorch's fan_in here
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, kernel_size, in_features,
                                                     out_features)))
        self.bias = nnx.Param(init(rngs.params(), (out_features,)))
        self.stride, self.implementation = stride, implementation

    def __call__(self, x: jax.Array) -> jax.Array:
        return convolutions.conv_transpose(x, self.kernel.value, self.stride,
                                           self.implementation) + self.bias.value


class BatchNorm(nnx.Module):
    """`torch.nn.BatchNorm2d(features)` over the last axis: batch statistics in training
    (`use_running_average=False`, what `model.train()` sets), else the running ones.

    The running statistics move as `stat = momentum * stat + (1 - momentum) * batch` (Flax's
    momentum 0.9 is PyTorch's 0.1), with the unbiased batch variance.
    """

    def __init__(self, features: int, *, momentum: float = 0.9, epsilon: float = 1e-5,
                 use_running_average: bool = False):
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))
        self.momentum, self.epsilon = momentum, epsilon
        self.use_running_average = use_running_average

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.use_running_average:
            return batch_norm_eval(x, self.scale.value, self.bias.value, self.mean.value,
                                   self.var.value, self.epsilon)
        y, mean, var = batch_norm_train(x, self.scale.value, self.bias.value, self.epsilon)
        self.mean.value, self.var.value = updated_running_statistics(
            self.mean.value, self.var.value, mean, var, math.prod(x.shape[:-1]), self.momentum)
        return y


class Encoder(nnx.Module):
    """Images (B, 28, 28, im_chan) -> (mean, stddev), each (B, z_dim)."""

    def __init__(self, z_dim: int = 32, im_chan: int = 1, hidden_dim: int = 16, *,
                 implementation: Implementation = "auto", rngs: nnx.Rngs):
        def conv(in_features, out_features):
            return Conv2d(in_features, out_features, 4, 2, implementation=implementation,
                          rngs=rngs)
        self.z_dim, self.im_chan = z_dim, im_chan
        self.conv1, self.bn1 = conv(im_chan, hidden_dim), BatchNorm(hidden_dim)
        self.conv2, self.bn2 = conv(hidden_dim, hidden_dim * 2), BatchNorm(hidden_dim * 2)
        self.conv3 = conv(hidden_dim * 2, 2 * z_dim)

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        check_input("images", images, (None, IMAGE_SIZE, IMAGE_SIZE, self.im_chan))
        x = nnx.leaky_relu(self.bn1(self.conv1(images)), negative_slope=0.2)  # (B, 13, 13, 16)
        x = nnx.leaky_relu(self.bn2(self.conv2(x)), negative_slope=0.2)       # (B, 5, 5, 32)
        x = self.conv3(x).reshape(images.shape[0], -1)                         # (B, 2*z_dim)
        mean, log_stddev = x[:, :self.z_dim], x[:, self.z_dim:]
        return mean, jnp.exp(log_stddev)


class Decoder(nnx.Module):
    """Latents (B, z_dim) -> logits (B, 28, 28, im_chan); sigmoid(logits) are the pixels."""

    def __init__(self, z_dim: int = 32, im_chan: int = 1, hidden_dim: int = 64, *,
                 implementation: Implementation = "auto", rngs: nnx.Rngs):
        def deconv(in_features, out_features, kernel_size, stride):
            return ConvTranspose2d(in_features, out_features, kernel_size, stride,
                                   implementation=implementation, rngs=rngs)
        self.z_dim = z_dim
        self.deconv1, self.bn1 = deconv(z_dim, hidden_dim * 4, 3, 2), BatchNorm(hidden_dim * 4)
        self.deconv2 = deconv(hidden_dim * 4, hidden_dim * 2, 4, 1)
        self.bn2 = BatchNorm(hidden_dim * 2)
        self.deconv3, self.bn3 = deconv(hidden_dim * 2, hidden_dim, 3, 2), BatchNorm(hidden_dim)
        self.deconv4 = deconv(hidden_dim, im_chan, 4, 2)

    def __call__(self, z: jax.Array) -> jax.Array:
        check_input("z", z, (None, self.z_dim))
        x = z.reshape(z.shape[0], 1, 1, self.z_dim)
        x = nnx.relu(self.bn1(self.deconv1(x)))                               # (B, 3, 3, 256)
        x = nnx.relu(self.bn2(self.deconv2(x)))                               # (B, 6, 6, 128)
        x = nnx.relu(self.bn3(self.deconv3(x)))                               # (B, 13, 13, 64)
        return self.deconv4(x)                                                # (B, 28, 28, C)


class VAE(nnx.Module):
    """Encoder + reparameterized sample + decoder.

    `model(images, key)` -> (logits, mean, stddev): logits (B, 28, 28, im_chan), mean and
    stddev (B, z_dim); the sample's noise comes from `key`. A new model is in training mode;
    `model.eval()` switches BatchNorm to the running averages, `model.train()` back.
    """

    def __init__(self, z_dim: int = 32, im_chan: int = 1, *,
                 implementation: Implementation = "auto", rngs: nnx.Rngs):
        self.z_dim, self.im_chan = z_dim, im_chan
        self.encoder = Encoder(z_dim, im_chan, implementation=implementation, rngs=rngs)
        self.decoder = Decoder(z_dim, im_chan, implementation=implementation, rngs=rngs)

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, 28, 28, im_chan) -> (mean, stddev), each (B, z_dim)."""
        return self.encoder(images)

    def decode(self, z: jax.Array) -> jax.Array:
        """(B, z_dim) -> logits (B, 28, 28, im_chan)."""
        return self.decoder(z)

    def __call__(self, images: jax.Array, key: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        mean, stddev = self.encode(images)
        return self.decode(reparameterize(key, mean, stddev)), mean, stddev


def from_linen(variables: dict, *, z_dim: int | None = None, im_chan: int | None = None,
               implementation: Implementation = "auto") -> VAE:
    """An NNX `VAE` holding the linen `variables` ({"params", "batch_stats"}, e.g. from
    `vae_jax.load_variables`): the same weights and BatchNorm statistics, in training mode.
    `z_dim` and `im_chan` default to what the kernels' shapes say."""
    missing = [name for name in ("params", "batch_stats")
               if not isinstance(variables, dict) or name not in variables]
    if missing:
        raise ValueError(f"the variables have no {' or '.join(missing)}: give the linen "
                         f"{{'params': ..., 'batch_stats': ...}} that vae_jax.load_variables "
                         f"returns, not a part of it")
    params = variables["params"]
    z_dim = z_dim or int(_entry(params, "decoder", "deconv1", "kernel").shape[2])
    im_chan = im_chan or int(_entry(params, "encoder", "conv1", "kernel").shape[2])
    # The model's structure without computing an initialisation (each variable is assigned).
    model = nnx.eval_shape(lambda: VAE(z_dim, im_chan, implementation=implementation,
                                       rngs=nnx.Rngs(0)))
    for part, name in CONVOLUTIONS + BATCH_NORMS:
        layer = getattr(getattr(model, part), name)
        names = ("kernel", "bias") if (part, name) in CONVOLUTIONS else ("scale", "bias")
        for key in names:
            _assign(getattr(layer, key), _entry(params, part, name, key),
                    f"params/{part}/{name}/{key}")
    for part, name in BATCH_NORMS:
        layer = getattr(getattr(model, part), name)
        for key in ("mean", "var"):
            _assign(getattr(layer, key), _entry(variables["batch_stats"], part, name, key),
                    f"batch_stats/{part}/{name}/{key}")
    return model


def _entry(tree: dict, part: str, name: str, key: str):
    try:
        return tree[part][name][key]
    except (KeyError, TypeError):
        raise ValueError(f"the variables have no {part}/{name}/{key}: they are not the "
                         "course VAE's") from None


def _assign(variable: nnx.Variable, value, where: str) -> None:
    value = jnp.array(value, jnp.float32)  # a copy: the model owns its arrays
    if value.shape != variable.value.shape:
        raise ValueError(f"{where} has shape {value.shape}, the NNX VAE's is "
                         f"{variable.value.shape}")
    variable.value = value


def to_linen(model: VAE) -> dict:
    """`{"params", "batch_stats"}` of `model`, as the linen `vae_jax.VAE` takes them (and as
    `vae_jax.save_variables` saves them)."""
    params, batch_stats = {"encoder": {}, "decoder": {}}, {"encoder": {}, "decoder": {}}
    for part, name in CONVOLUTIONS:
        layer = getattr(getattr(model, part), name)
        params[part][name] = {"kernel": layer.kernel.value, "bias": layer.bias.value}
    for part, name in BATCH_NORMS:
        layer = getattr(getattr(model, part), name)
        params[part][name] = {"scale": layer.scale.value, "bias": layer.bias.value}
        batch_stats[part][name] = {"mean": layer.mean.value, "var": layer.var.value}
    return {"params": params, "batch_stats": batch_stats}
