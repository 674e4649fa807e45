"""The importance-weighted bound on log p(x) (Burda et al. 2015), as pure functions.

    log p(x) >= E[log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x)],   z_k ~ q(z|x)

K = 1 is the ELBO; the bound tightens as K grows (K = 5000 is the literature's NLL
estimate). The decoder and the likelihood are arguments (`decode_fn`, `log_likelihood_fn`),
so the math can be checked on models whose log p(x) is known (tests/test_iwae.py); for the
VAE, `decode_fn` maps latents to logits and the likelihood is the Bernoulli one, minus the
course's summed binary cross-entropy. `vae_jax.evaluation` runs this over a dataset.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from vae_jax.model import losses

LogLikelihoodFn = Callable[[jax.Array, jax.Array], jax.Array]
DecodeFn = Callable[[jax.Array], jax.Array]


def bernoulli_log_likelihood(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(x|z) of targets in [0, 1] under Bernoulli(sigmoid(logits)), summed: (B, ...) -> (B,).

    Exactly minus `losses.reconstruction_loss`, the course's summed binary cross-entropy.
    """
    return -losses.reconstruction_loss(logits, targets)


def gaussian_log_density(z: jax.Array, mean: jax.Array, stddev: jax.Array) -> jax.Array:
    """log N(z; mean, diag(stddev^2)) summed over the last axis."""
    standardized = (z - mean) / stddev
    per_dim = -0.5 * jnp.square(standardized) - jnp.log(stddev) - 0.5 * math.log(2 * math.pi)
    return per_dim.sum(axis=-1)


def iwae_bound(log_weights: jax.Array, axis: int = 0) -> jax.Array:
    """log (1/K) sum_k exp(log_weights_k) along `axis` (K = its length): the IWAE bound on
    log p(x) from K importance log-weights log p(x, z_k) - log q(z_k|x)."""
    num_samples = log_weights.shape[axis]
    return jax.nn.logsumexp(log_weights, axis=axis) - math.log(num_samples)


def image_keys(key: jax.Array, image_indices: jax.Array) -> jax.Array:
    """One key per image: `key` folded with each image's index in its split, (B,)."""
    return jax.vmap(lambda index: jax.random.fold_in(key, index))(image_indices)


def sample_latents(keys: jax.Array, mean: jax.Array, stddev: jax.Array,
                   indices: jax.Array) -> jax.Array:
    """z_k = mean + stddev * eps_k for each sample index k in `indices`: (len, B, z).

    `keys` holds one key per image, (B,) (`image_keys`; a single key is folded with the
    row number). Sample k of image b comes from `fold_in(keys[b], k)`: the same however the
    K samples are chunked, the images batched, or the batch split over devices.
    """
    if keys.ndim == 0:
        keys = image_keys(keys, jnp.arange(mean.shape[0]))

    def draw(k):
        return jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, k),
                                                      mean.shape[1:], mean.dtype))(keys)

    return mean[None] + stddev[None] * jax.vmap(draw)(indices)


def _log_weights_for(z: jax.Array, images: jax.Array, mean: jax.Array, stddev: jax.Array,
                     decode_fn: DecodeFn, log_likelihood_fn: LogLikelihoodFn) -> jax.Array:
    """log p(x|z) + log p(z) - log q(z|x) for latents z (S, B, z_dim): (S, B)."""
    num, batch = z.shape[:2]
    outputs = decode_fn(z.reshape(num * batch, z.shape[-1]))
    targets = jnp.broadcast_to(images[None], (num,) + images.shape)
    log_px = log_likelihood_fn(outputs, targets.reshape((num * batch,) + images.shape[1:]))
    log_pz = gaussian_log_density(z, 0.0, 1.0)
    log_qz = gaussian_log_density(z, mean[None], stddev[None])
    return log_px.reshape(num, batch) + log_pz - log_qz


def importance_log_weights(keys: jax.Array, images: jax.Array, mean: jax.Array,
                           stddev: jax.Array, decode_fn: DecodeFn, num_samples: int,
                           log_likelihood_fn: LogLikelihoodFn = bernoulli_log_likelihood,
                           ) -> jax.Array:
    """All K log-weights at once, (K, B): unchunked (K x B decodes in memory); for small K
    and tests. Sample k is the same as in `iwae_log_likelihood` with the same keys."""
    z = sample_latents(keys, mean, stddev, jnp.arange(num_samples))
    return _log_weights_for(z, images, mean, stddev, decode_fn, log_likelihood_fn)


def iwae_log_likelihood(keys: jax.Array, images: jax.Array, mean: jax.Array, stddev: jax.Array,
                        decode_fn: DecodeFn, num_samples: int, chunk_size: int | None = None,
                        log_likelihood_fn: LogLikelihoodFn = bernoulli_log_likelihood,
                        ) -> jax.Array:
    """The IWAE estimate of log p(x) per image with K = `num_samples` samples: (B,).

    keys: one per image, (B,), or a single key (`sample_latents`); images (B, ...), mean
    and stddev (B, z) of q(z|x) (the encoder runs once, outside);
    `decode_fn` maps (N, z) latents to the likelihood's parameters (logits), and
    `log_likelihood_fn(outputs, targets)` gives log p(x|z) per row. The samples go through
    the decoder `chunk_size` at a time (chunk_size x B images per call) inside a `lax.scan`
    that keeps a running logsumexp, so memory does not grow with K. A last partial chunk
    is masked out. Jit-compatible with `decode_fn`, `log_likelihood_fn`, `num_samples` and
    `chunk_size` static.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    chunk_size = min(num_samples, chunk_size or num_samples)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    num_chunks = -(-num_samples // chunk_size)

    def body(running, chunk):
        indices = chunk * chunk_size + jnp.arange(chunk_size)
        z = sample_latents(keys, mean, stddev, indices)
        log_weights = _log_weights_for(z, images, mean, stddev, decode_fn, log_likelihood_fn)
        log_weights = jnp.where((indices < num_samples)[:, None], log_weights, -jnp.inf)
        return jnp.logaddexp(running, jax.nn.logsumexp(log_weights, axis=0)), None

    initial = jnp.full(images.shape[:1], -jnp.inf, jnp.float32)
    total, _ = jax.lax.scan(body, initial, jnp.arange(num_chunks))
    return total - math.log(num_samples)
