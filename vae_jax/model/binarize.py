"""Dynamic binarization: each pixel becomes 1 with probability equal to its gray level.

The literature's MNIST log-likelihoods (Burda et al. 2015, Kingma et al. 2016) are for
binary images drawn this way, a fresh draw each time an image is used in training. Under a
Bernoulli decoder the binary cross-entropy of a binary image is then a true negative
log-likelihood; the course's grayscale targets are not (docs/guides/evaluation.md).
"""

from __future__ import annotations

from typing import Literal, get_args

import jax
import jax.numpy as jnp

# "none": the course's grayscale targets; "dynamic": Bernoulli(pixel) draws.
BinarizeMode = Literal["none", "dynamic"]
BINARIZE_MODES: tuple[str, ...] = get_args(BinarizeMode)


def binarize(key: jax.Array, images: jax.Array) -> jax.Array:
    """Bernoulli(pixel) samples of images in [0, 1]: same shape, float32 values 0.0 or 1.0.

    A pure function of (key, images): the same key gives the same binary images.
    """
    images = jnp.asarray(images)
    return jax.random.bernoulli(key, jnp.clip(images, 0.0, 1.0)).astype(jnp.float32)
