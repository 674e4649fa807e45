"""The jitted training computations: one step, and one whole epoch.

An epoch runs either as a Python loop of `make_train_step()` calls (`vae_jax.training.loop`)
or as `make_train_epoch()`, one jitted `lax.scan` over data held on the device; both give
the same result.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import optax

from vae_jax.data import input_pipeline
from vae_jax.model import losses, objectives
from vae_jax.model.binarize import binarize as binarize_images
from vae_jax.model.objectives import ELBO, Objective
from vae_jax.runtime.mesh import DataParallel
from vae_jax.training.schedules import COURSE_KL_WEIGHT
from vae_jax.training.train_state import TrainState


def train_step(state: TrainState, images: jax.Array, binarize: bool = False,
               kl_weight: optax.Schedule = COURSE_KL_WEIGHT,
               objective: Objective = ELBO) -> tuple[TrainState, dict]:
    """One Adam step on a batch (B, 28, 28, C); returns the new state and batch metrics.

    Metrics are the batch means (per image, before the update) of `loss` (the true negative
    ELBO of one sample), `reconstruction` and `kl`, whatever the objective. The ELBO's loss
    weighs the KL term by `kl_weight(state.step)` (β; 1 by default, the course); `objective`
    "iwae" or "dreg" minimises minus the IWAE bound with K samples instead
    (`vae_jax.model.objectives`). The state's key is split: one part samples z now, the
    other is kept. With `binarize`, a third part draws the batch's binary images (input and
    target).
    """
    if binarize:
        key, sample_key, binarize_key = jax.random.split(state.key, 3)
        images = binarize_images(binarize_key, images)
    else:
        key, sample_key = jax.random.split(state.key)

    if objective.name == "elbo":
        grads, metrics, batch_stats = elbo_gradients(state, images, sample_key, kl_weight)
    else:
        grads, metrics, batch_stats = importance_weighted_gradients(state, images, sample_key,
                                                                    objective)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats, key=key)
    return state, metrics


def elbo_gradients(state: TrainState, images: jax.Array, sample_key: jax.Array,
                   kl_weight: optax.Schedule) -> tuple[dict, dict, dict]:
    """Gradients of the course's loss (reconstruction + β KL, summed over the batch), the
    batch metrics, and the updated BatchNorm statistics."""
    def loss_fn(params):
        (logits, mean, stddev), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, images, sample_key,
            train=True, mutable=["batch_stats"])
        loss, metrics = losses.vae_loss(logits, images, mean, stddev,
                                        kl_weight(state.step))
        return loss, (metrics, updates["batch_stats"])

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    return grads, metrics, batch_stats


def sample_and_decode(module, images: jax.Array, key: jax.Array, samples: int, *,
                      train: bool):
    """The VAE's encoder once, then its decoder on K = `samples` latents per image at once:
    (mean, stddev, z (K, B, z_dim), logits (K*B, 28, 28, C)). eps (K, B, z_dim) is drawn
    from `key` in one call, so for K = 1 z is `reparameterize(key, mean, stddev)`, the ELBO
    step's sample. In training mode the decoder's BatchNorm normalizes over all K*B."""
    mean, stddev = module.encode(images, train=train)
    eps = jax.random.normal(key, (samples,) + mean.shape, mean.dtype)
    z = mean[None] + stddev[None] * eps
    return mean, stddev, z, module.decode(z.reshape(-1, z.shape[-1]), train=train)


def importance_weighted_gradients(state: TrainState, images: jax.Array, sample_key: jax.Array,
                                  objective: Objective) -> tuple[dict, dict, dict]:
    """Gradients of minus the IWAE bound summed over the batch (DReG's for the encoder when
    `objective.name` is "dreg"), the ELBO metrics of the first sample, and the updated
    BatchNorm statistics."""
    def forward(params, stop_posterior: bool):
        (mean, stddev, z, logits), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, images, sample_key,
            objective.samples, train=True, mutable=["batch_stats"], method=sample_and_decode)
        posterior = (jax.lax.stop_gradient(mean), jax.lax.stop_gradient(stddev)) \
            if stop_posterior else (mean, stddev)
        log_weights = objectives.log_weights(logits, images, z, *posterior)
        metrics = objectives.elbo_metrics(logits, images, mean, stddev)
        return log_weights, (metrics, updates["batch_stats"])

    if objective.name == "dreg":
        grads, _, (metrics, batch_stats) = objectives.dreg_gradients(
            lambda params: forward(params, stop_posterior=True), state.params)
        return grads, metrics, batch_stats

    def loss_fn(params):
        log_weights, aux = forward(params, stop_posterior=False)
        return objectives.iwae_loss(log_weights).sum(), aux

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    return grads, metrics, batch_stats


def make_train_step(max_traces: int | None = None, binarize: bool = False,
                    parallel: DataParallel | None = None,
                    kl_weight: optax.Schedule = COURSE_KL_WEIGHT, objective: Objective = ELBO
                    ) -> Callable:
    """`train_step` jitted with its state donated; `kl_weight` schedules the KL term's weight β,
    `objective` is what the step minimises.

    With `parallel`, the state (and the metrics) stay replicated on its mesh and the batch
    is split over it (`DataParallel.split`). With `max_traces`, `chex.assert_max_traces`
    guards the compilations (a run needs two: the full batch and the last, smaller one).
    chex counts traces per place in the code, not per function object, so the guard is for
    tests: in a notebook that trains twice the second run would trip it.
    """
    def step(state, images):
        return train_step(state, images, binarize, kl_weight, objective)

    if max_traces is not None:
        step = chex.assert_max_traces(step, n=max_traces)
    shardings = {} if parallel is None else dict(
        in_shardings=(parallel.replicated, parallel.batch), out_shardings=parallel.replicated)
    return jax.jit(step, donate_argnums=0, **shardings)


def make_train_epoch(batch_size: int, max_traces: int | None = None, binarize: bool = False,
                     parallel: DataParallel | None = None,
                     kl_weight: optax.Schedule = COURSE_KL_WEIGHT, objective: Objective = ELBO
                     ) -> Callable:
    """The whole epoch as one jitted function of (state, images on device, epoch key).

    Returns (state, sums) where sums are the per-image metrics summed over the epoch. Data
    order and keys are the same as in the step-by-step loop
    (`vae_jax.training.loop.run_epoch_steps`).
    With `parallel`, the state and the training set are replicated on its mesh and each
    batch is split over it. `max_traces` as for `make_train_step` (one compilation serves
    every epoch).
    """
    train_epoch = _train_epoch_fn(batch_size, binarize,
                                  None if parallel is None else parallel.batch, kl_weight,
                                  objective)
    if max_traces is not None:
        train_epoch = chex.assert_max_traces(train_epoch, n=max_traces)
    shardings = {} if parallel is None else dict(in_shardings=parallel.replicated,
                                                 out_shardings=parallel.replicated)
    return jax.jit(train_epoch, donate_argnums=0, **shardings)


def _train_epoch_fn(batch_size: int, binarize: bool, batch_sharding=None,
                    kl_weight: optax.Schedule = COURSE_KL_WEIGHT,
                    objective: Objective = ELBO) -> Callable:
    def batch_of(images, indices):
        batch = images[indices]
        if batch_sharding is None:
            return batch
        return jax.lax.with_sharding_constraint(batch, batch_sharding)

    def train_epoch(state, images, epoch_key):
        num_examples = images.shape[0]
        order = input_pipeline.epoch_permutation(epoch_key, num_examples)
        num_full = num_examples // batch_size

        def body(state, batch_indices):
            return train_step(state, batch_of(images, batch_indices), binarize, kl_weight,
                              objective)

        state, metrics = jax.lax.scan(
            body, state, order[:num_full * batch_size].reshape(num_full, batch_size))
        sums = jax.tree.map(lambda m: m.sum() * batch_size, metrics)
        if num_examples % batch_size:
            state, last = train_step(
                state, batch_of(images, order[num_full * batch_size:]), binarize, kl_weight,
                objective)
            rest = num_examples - num_full * batch_size
            sums = jax.tree.map(lambda s, m: s + m * rest, sums, last)
        return state, sums

    return train_epoch
