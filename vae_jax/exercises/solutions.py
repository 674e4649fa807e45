"""Reference solutions of the exercises, written as a learner would write them.

`vae_jax.exercises.solution(name)` shows one; the checks compare a learner's function with
the library's own implementation (`vae_jax.model`), not with these, and the tests hold
these to the checks.
"""

import jax
import jax.numpy as jnp


def split(encoding):
    z_dim = encoding.shape[-1] // 2
    mean = encoding[:, :z_dim]
    stddev = jnp.exp(encoding[:, z_dim:])  # the encoder emits log(stddev)
    return mean, stddev


def reparameterize(key, mean, stddev):
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + stddev * eps


def kl(mean, stddev):
    per_dimension = 0.5 * (mean**2 + stddev**2) - jnp.log(stddev) - 0.5
    return per_dimension.sum(axis=-1)


def reconstruction(logits, images):
    per_pixel = jax.nn.softplus(logits) - images * logits  # -log p(image | logits), stable
    return per_pixel.reshape(per_pixel.shape[0], -1).sum(axis=-1)


def loss(logits, images, mean, stddev):
    return (reconstruction(logits, images) + kl(mean, stddev)).sum()


def train_step(state, images):
    key, sample_key = jax.random.split(state.key)

    def loss_fn(params):
        (logits, mean, stddev), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, images, sample_key,
            train=True, mutable=["batch_stats"])
        return loss(logits, images, mean, stddev), updates["batch_stats"]

    (value, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats, key=key)
    return state, value


def sample(key, decode, num, z_dim):
    z = jax.random.normal(key, (num, z_dim))  # z ~ N(0, I), the prior
    return jax.nn.sigmoid(decode(z))


def iwae(log_weights):
    num_samples = log_weights.shape[0]
    return jax.nn.logsumexp(log_weights, axis=0) - jnp.log(num_samples)
