"""Training objectives beyond the ELBO, as pure functions: the importance-weighted bound
(IWAE, Burda et al. 2015) and its doubly-reparameterized gradient for the encoder (DReG,
Tucker et al. 2018).

With K samples z_k = mean + stddev * eps_k from q(z|x), the log-weights are
log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), shape (K, B), and

    IWAE_K(x) = log (1/K) sum_k w_k   <=  log p(x),

which is the ELBO for K = 1 and tightens as K grows. Its plain reparameterized gradient gets
noisier for the encoder as K grows; DReG removes the noisy score-function part: for the
encoder's parameters phi it is sum_k w~_k^2 d log w_k / d z_k * d z_k / d phi (with
w~ = softmax(log w) over k, and log q's direct dependence on phi cut), for the decoder's
the IWAE gradient sum_k w~_k d log w_k / d theta. `vae_jax.training.steps` trains with them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp

from vae_jax.model import iwae, losses

ObjectiveName = Literal["elbo", "iwae", "dreg"]
OBJECTIVES: tuple[str, ...] = ("elbo", "iwae", "dreg")


@dataclasses.dataclass(frozen=True)
class Objective:
    """What training maximises: `name` ("elbo", the course's; "iwae"; "dreg", the IWAE bound
    with DReG's encoder gradient) with `samples` (K) importance samples per image."""

    name: ObjectiveName = "elbo"
    samples: int = 1

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got "
                             f"{self.name!r}")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"objective samples must be a positive integer, got "
                             f"{self.samples!r}")
        if self.name == "elbo" and self.samples != 1:
            raise ValueError("the ELBO objective takes one sample; --objective-samples is for "
                             "iwae and dreg")


ELBO = Objective()  # the course's


def log_weights(logits: jax.Array, images: jax.Array, z: jax.Array, mean: jax.Array,
                stddev: jax.Array) -> jax.Array:
    """log p(x|z_k) + log p(z_k) - log q(z_k|x): (K, B).

    logits (K*B, 28, 28, C) decoded from z (K, B, z_dim), images (B, 28, 28, C), mean and
    stddev (B, z_dim) of q(z|x). Pass `jax.lax.stop_gradient`-ed mean and stddev for DReG.
    """
    num, batch = z.shape[:2]
    targets = jnp.broadcast_to(images[None], (num,) + images.shape).reshape(logits.shape)
    log_px = iwae.bernoulli_log_likelihood(logits, targets).reshape(num, batch)
    return (log_px + iwae.gaussian_log_density(z, 0.0, 1.0)
            - iwae.gaussian_log_density(z, mean[None], stddev[None]))


def iwae_loss(log_weights: jax.Array) -> jax.Array:
    """Minus the IWAE bound of each image from its K log-weights (K, B): (B,)."""
    return -iwae.iwae_bound(log_weights, axis=0)


def elbo_metrics(logits: jax.Array, images: jax.Array, mean: jax.Array,
                 stddev: jax.Array) -> dict[str, jax.Array]:
    """The per-image negative ELBO of the first sample (its `loss`, `reconstruction` and
    `kl`, batch means) from logits (K*B, ...) whose first B rows decode z_0: what the ELBO
    step reports, whatever the objective."""
    _, metrics = losses.vae_loss(logits[:images.shape[0]], images, mean, stddev)
    return metrics


def dreg_gradients(log_weights_fn: Callable, params: dict) -> tuple[dict, jax.Array, object]:
    """DReG's gradient of minus the summed IWAE bound, for params {"encoder", "decoder"}.

    `log_weights_fn(params)` -> (log_weights (K, B), aux), with q's mean and stddev
    stop-gradient-ed inside (z still depends on the encoder through the sample). One
    forward pass, two pullbacks: the encoder's gradient with weights w~^2, the decoder's
    with w~ (the IWAE gradient). Returns (gradients, log_weights, aux).
    """
    weights_log, pullback, aux = jax.vjp(log_weights_fn, params, has_aux=True)
    normalized = jax.lax.stop_gradient(jax.nn.softmax(weights_log, axis=0))
    decoder_grads, = pullback(-normalized)
    encoder_grads, = pullback(-jnp.square(normalized))
    grads = {name: (encoder_grads if name == "encoder" else decoder_grads)[name]
             for name in params}
    return grads, weights_log, aux
