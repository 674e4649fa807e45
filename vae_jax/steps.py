"""The train state and the jitted training computations: one step, and one whole epoch.

Every random choice comes from one seed: `RunKeys.from_seed` splits `jax.random.key(seed)`
into the parameter-init key, the training key carried (and split at every step) in the
train state, the shuffle key (folded with the epoch number), the evaluation key (likewise)
and the key of the pictures drawn after each epoch.

An epoch runs either as a Python loop of `make_train_step()` calls (`vae_jax.train`) or as
`make_train_epoch()`, one jitted `lax.scan` over data held on the device; both give the same
result.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from vae_jax import input_pipeline, losses
from vae_jax.binarize import binarize as binarize_images
from vae_jax.losses import KLSchedule
from vae_jax.models import IMAGE_SIZE, VAE
from vae_jax.parallel import DataParallel, to_host


class TrainState(train_state.TrainState):
    """params, opt_state and step (from Flax), plus BatchNorm statistics and the PRNG key."""

    batch_stats: Any
    key: jax.Array

    @property
    def variables(self) -> dict:
        """`{"params", "batch_stats"}`, what `VAE.apply` takes."""
        return {"params": self.params, "batch_stats": self.batch_stats}


@dataclasses.dataclass(frozen=True)
class RunKeys:
    """The independent keys one seed gives a run."""

    init: jax.Array
    train: jax.Array
    shuffle: jax.Array
    eval: jax.Array
    pictures: jax.Array

    @classmethod
    def from_seed(cls, seed: int) -> "RunKeys":
        return cls(*jax.random.split(jax.random.key(seed), 5))


def step_of(state: TrainState) -> int:
    """The state's step as a Python int (the state may be replicated over many processes)."""
    return int(to_host(state.step))


def make_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Adam with PyTorch's (and optax's) defaults: betas 0.9/0.999, eps 1e-8."""
    return optax.adam(learning_rate)


def create_train_state(model: VAE, optimizer: optax.GradientTransformation,
                       init_key: jax.Array, train_key: jax.Array) -> TrainState:
    """Initialises the model's variables and the optimizer's state."""
    param_key, noise_key = jax.random.split(init_key)
    dummy = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, model.im_chan), jnp.float32)
    # One compiled program: run op by op, init compiles each op on its own (14 s on 2 cores).
    variables = jax.jit(model.init, static_argnames="train")(param_key, dummy, noise_key,
                                                             train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             tx=optimizer,
                             batch_stats=variables["batch_stats"], key=train_key)


def train_step(state: TrainState, images: jax.Array, binarize: bool = False,
               kl: KLSchedule = KLSchedule()) -> tuple[TrainState, dict]:
    """One Adam step on a batch (B, 28, 28, C); returns the new state and batch metrics.

    Metrics are the batch means (per image, before the update) of `loss` (the true negative
    ELBO), `reconstruction` and `kl`. The loss minimised weighs the KL term by
    `kl.at(state.step)` (β; 1 by default, the course). The state's key is split: one part
    samples z now, the other is kept. With `binarize`, a third part draws the batch's binary
    images (input and target).
    """
    if binarize:
        key, sample_key, binarize_key = jax.random.split(state.key, 3)
        images = binarize_images(binarize_key, images)
    else:
        key, sample_key = jax.random.split(state.key)

    def loss_fn(params):
        (logits, mean, stddev), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, images, sample_key,
            train=True, mutable=["batch_stats"])
        loss, metrics = losses.vae_loss(logits, images, mean, stddev, kl.at(state.step))
        return loss, (metrics, updates["batch_stats"])

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats, key=key)
    return state, metrics


def make_train_step(max_traces: int | None = None, binarize: bool = False,
                    parallel: DataParallel | None = None, kl: KLSchedule = KLSchedule()
                    ) -> Callable:
    """`train_step` jitted with its state donated; `kl` schedules the KL term's weight β.

    With `parallel`, the state (and the metrics) stay replicated on its mesh and the batch
    is split over it (`DataParallel.split`). With `max_traces`, `chex.assert_max_traces`
    guards the compilations (a run needs two: the full batch and the last, smaller one).
    chex counts traces per place in the code, not per function object, so the guard is for
    tests: in a notebook that trains twice the second run would trip it.
    """
    def step(state, images):
        return train_step(state, images, binarize, kl)

    if max_traces is not None:
        step = chex.assert_max_traces(step, n=max_traces)
    shardings = {} if parallel is None else dict(
        in_shardings=(parallel.replicated, parallel.batch), out_shardings=parallel.replicated)
    return jax.jit(step, donate_argnums=0, **shardings)


def make_train_epoch(batch_size: int, max_traces: int | None = None, binarize: bool = False,
                     parallel: DataParallel | None = None, kl: KLSchedule = KLSchedule()
                     ) -> Callable:
    """The whole epoch as one jitted function of (state, images on device, epoch key).

    Returns (state, sums) where sums are the per-image metrics summed over the epoch. Data
    order and keys are the same as in the step-by-step loop (`vae_jax.train.run_epoch_steps`).
    With `parallel`, the state and the training set are replicated on its mesh and each
    batch is split over it. `max_traces` as for `make_train_step` (one compilation serves
    every epoch).
    """
    train_epoch = _train_epoch_fn(batch_size, binarize,
                                  None if parallel is None else parallel.batch, kl)
    if max_traces is not None:
        train_epoch = chex.assert_max_traces(train_epoch, n=max_traces)
    shardings = {} if parallel is None else dict(in_shardings=parallel.replicated,
                                                 out_shardings=parallel.replicated)
    return jax.jit(train_epoch, donate_argnums=0, **shardings)


def _train_epoch_fn(batch_size: int, binarize: bool, batch_sharding=None,
                    kl: KLSchedule = KLSchedule()) -> Callable:
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
            return train_step(state, batch_of(images, batch_indices), binarize, kl)

        state, metrics = jax.lax.scan(
            body, state, order[:num_full * batch_size].reshape(num_full, batch_size))
        sums = jax.tree.map(lambda m: m.sum() * batch_size, metrics)
        if num_examples % batch_size:
            state, last = train_step(
                state, batch_of(images, order[num_full * batch_size:]), binarize, kl)
            rest = num_examples - num_full * batch_size
            sums = jax.tree.map(lambda s, m: s + m * rest, sums, last)
        return state, sums

    return train_epoch
