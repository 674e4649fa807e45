"""Samples from a trained VAE's prior: z ~ N(0, I) decoded in eval mode, in batches.

`vae-jax-sample` writes them as a PNG grid."""

from __future__ import annotations

import jax
import numpy as np

from vae_jax.evaluation import elbo, likelihood
from vae_jax.model.vae import VAE

SAMPLES_PER_CALL = 1000  # decoded at a time
MAX_SAMPLES = 10_000     # a 100x100 grid; more would not be readable in one picture


def sample_images(model: VAE, variables: dict, key: jax.Array, num: int,
                  batch_size: int = SAMPLES_PER_CALL) -> np.ndarray:
    """`num` decoded prior samples, (num, 28, 28, im_chan) in [0, 1].

    z ~ N(0, I) is drawn at once, (num, z_dim), and decoded `batch_size` at a time, so the
    decoder's memory does not grow with `num` (the result does not depend on `batch_size`).
    """
    elbo.check_count(num, "num")
    elbo.check_count(batch_size, "batch_size")
    z = np.asarray(jax.random.normal(key, (num, model.z_dim)))
    decode = likelihood.jitted_decoder(model)
    return np.concatenate([
        np.asarray(jax.nn.sigmoid(decode(variables, z[start:start + batch_size])))
        for start in range(0, num, batch_size)])
