"""The train state, and the keys one seed gives a run.

Every random choice comes from one seed: `RunKeys.from_seed` splits `jax.random.key(seed)`
into the parameter-init key, the training key carried (and split at every step) in the
train state, the shuffle key (folded with the epoch number), the evaluation key (likewise)
and the key of the pictures drawn after each epoch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from vae_jax.model.vae import IMAGE_SIZE, VAE
from vae_jax.runtime.mesh import to_host


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


def make_optimizer(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """Adam with PyTorch's (and optax's) defaults: betas 0.9/0.999, eps 1e-8; the learning
    rate a positive number or a schedule (`vae_jax.training.schedules`)."""
    if not callable(learning_rate):
        rate = float(learning_rate)
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"the learning rate must be a positive finite number (the course "
                             f"uses 2e-3) or a schedule, got {learning_rate}")
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
