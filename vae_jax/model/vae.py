"""The course's convolutional VAE as Flax linen modules (NHWC, 28x28 images).

Layer for layer the model of the DeepLearning.AI GANs course 2, week 2 (docs/model.md
specifies it). Images are float32 in [0, 1], shape (B, 28, 28, im_chan).

The encoder's last convolution gives 2*z_dim numbers per image. Nothing in the architecture
makes one half a mean and the other a standard deviation: `reparameterize` and the KL term
in `losses.py` use them that way, and training gives them that meaning. The second half is
read as log(stddev) and exponentiated, so the network can output any real number and the
standard deviation stays positive. (The original's comment calls it "the log of the
variance"; the code, like this one, uses exp of it as the standard deviation.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from vae_jax.kernels.convolutions import Implementation
from vae_jax.model.layers import BatchNorm, Conv2d, ConvTranspose2d

IMAGE_SIZE = 28


def reparameterize(key: jax.Array, mean: jax.Array, stddev: jax.Array) -> jax.Array:
    """Samples z = mean + stddev * eps with eps ~ N(0, I) drawn from `key`.

    mean, stddev: (B, z_dim). The sample is a differentiable function of mean and stddev
    (dz/dmean = 1, dz/dstddev = eps), which is what lets gradients reach the encoder.
    """
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + stddev * eps


def check_input(name: str, array: jax.Array, expected: tuple) -> None:
    """Raises ValueError unless `array` is floating point with shape `expected` (None = any)."""
    shape = tuple(array.shape)
    if len(shape) != len(expected) or any(
            want is not None and got != want for got, want in zip(shape, expected)):
        shown = ", ".join("B" if want is None else str(want) for want in expected)
        raise ValueError(f"{name} must have shape ({shown}), got {shape}")
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point (scaled to [0, 1]), got dtype "
                         f"{array.dtype}")


class Encoder(nn.Module):
    """Images (B, 28, 28, im_chan) -> (mean, stddev), each (B, z_dim)."""

    z_dim: int = 32
    hidden_dim: int = 16
    im_chan: int = 1
    implementation: Implementation = "auto"

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        check_input("images", images, (None, IMAGE_SIZE, IMAGE_SIZE, self.im_chan))
        conv = lambda features, name: Conv2d(  # noqa: E731
            features, kernel_size=4, stride=2, implementation=self.implementation, name=name)
        x = conv(self.hidden_dim, "conv1")(images)                       # (B, 13, 13, 16)
        x = nn.leaky_relu(BatchNorm(name="bn1")(x, train=train), negative_slope=0.2)
        x = conv(self.hidden_dim * 2, "conv2")(x)                        # (B, 5, 5, 32)
        x = nn.leaky_relu(BatchNorm(name="bn2")(x, train=train), negative_slope=0.2)
        x = conv(2 * self.z_dim, "conv3")(x)                             # (B, 1, 1, 2*z_dim)
        x = x.reshape(x.shape[0], -1)
        mean, log_stddev = x[:, :self.z_dim], x[:, self.z_dim:]
        return mean, jnp.exp(log_stddev)


class Decoder(nn.Module):
    """Latents (B, z_dim) -> logits (B, 28, 28, im_chan); sigmoid(logits) are the pixels."""

    z_dim: int = 32
    im_chan: int = 1
    hidden_dim: int = 64
    implementation: Implementation = "auto"

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
        check_input("z", z, (None, self.z_dim))
        deconv = lambda features, kernel_size, stride, name: ConvTranspose2d(  # noqa: E731
            features, kernel_size, stride, implementation=self.implementation, name=name)
        x = z.reshape(z.shape[0], 1, 1, self.z_dim)
        x = deconv(self.hidden_dim * 4, 3, 2, "deconv1")(x)             # (B, 3, 3, 256)
        x = nn.relu(BatchNorm(name="bn1")(x, train=train))
        x = deconv(self.hidden_dim * 2, 4, 1, "deconv2")(x)             # (B, 6, 6, 128)
        x = nn.relu(BatchNorm(name="bn2")(x, train=train))
        x = deconv(self.hidden_dim, 3, 2, "deconv3")(x)                 # (B, 13, 13, 64)
        x = nn.relu(BatchNorm(name="bn3")(x, train=train))
        return deconv(self.im_chan, 4, 2, "deconv4")(x)                 # (B, 28, 28, im_chan)


class VAE(nn.Module):
    """Encoder + reparameterized sample + decoder.

    `__call__(images, key, train=...)` -> (logits, mean, stddev): logits (B, 28, 28, im_chan),
    mean and stddev (B, z_dim). The sample's noise comes from the caller's `key`.
    `hidden_dim` is the encoder's first channel count (the course's 16); the decoder's is
    4x it (the course's 64), so one number widens the whole model.
    """

    z_dim: int = 32
    im_chan: int = 1
    implementation: Implementation = "auto"
    hidden_dim: int = 16

    def setup(self):
        self.encoder = Encoder(z_dim=self.z_dim, im_chan=self.im_chan,
                               hidden_dim=self.hidden_dim, implementation=self.implementation)
        self.decoder = Decoder(z_dim=self.z_dim, im_chan=self.im_chan,
                               hidden_dim=4 * self.hidden_dim,
                               implementation=self.implementation)

    def encode(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """(B, 28, 28, im_chan) -> (mean, stddev), each (B, z_dim)."""
        return self.encoder(images, train=train)

    def decode(self, z: jax.Array, *, train: bool) -> jax.Array:
        """(B, z_dim) -> logits (B, 28, 28, im_chan)."""
        return self.decoder(z, train=train)

    def __call__(self, images: jax.Array, key: jax.Array, *, train: bool):
        mean, stddev = self.encode(images, train=train)
        z = reparameterize(key, mean, stddev)
        return self.decode(z, train=train), mean, stddev


def variable_shapes(model: VAE) -> dict:
    """`model`'s variables `{"params", "batch_stats"}` as `jax.ShapeDtypeStruct` leaves.

    From `jax.eval_shape`: nothing is computed or compiled.
    """
    images = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, model.im_chan), jnp.float32)
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), images, jax.random.key(1), train=False))
