"""What the exercises notebook runs around the learner's functions: MNIST images, the
course's model and a fresh train state, a few epochs of the learner's own step, the
importance log-weights of a trained model, and pictures.

The test suite runs the notebook in its quick mode (`vae_jax.data.notebook_mode`: a few
images, one epoch, offline on tfds's mock MNIST), out of the learner's sight.
"""

from __future__ import annotations

import io
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.data import notebook_mode
from vae_jax.data.input_pipeline import epoch_permutation, load_split
from vae_jax.evaluation import grids, likelihood
from vae_jax.model import iwae
from vae_jax.model.vae import VAE
from vae_jax.training.config import TrainConfig
from vae_jax.training.train_state import TrainState, create_train_state, make_optimizer


def mnist(split: str, count: int) -> np.ndarray:
    """The first `count` images of MNIST's `split` ("train" or "test"): (count, 28, 28, 1)
    float32 in [0, 1] (at most `notebook_mode.QUICK_TEST_IMAGES` in quick mode)."""
    if notebook_mode.quick():
        count = min(count, notebook_mode.QUICK_TEST_IMAGES)
    with notebook_mode.data():
        images, _ = load_split("mnist", f"{split}[:{count}]")
    return images


def new_train_state(seed: int = 0) -> TrainState:
    """The course's VAE, freshly initialised, with the course's Adam (learning rate 2e-3):
    `state.params`, `state.batch_stats`, `state.key`, `state.apply_fn`,
    `state.apply_gradients(...)`."""
    init_key, train_key = jax.random.split(jax.random.key(seed))
    return create_train_state(VAE(), make_optimizer(TrainConfig().learning_rate), init_key,
                              train_key)


def train(train_step: Callable, state: TrainState, images: np.ndarray, *, epochs: int,
          batch_size: int = 256, seed: int = 0) -> TrainState:
    """`epochs` passes of the learner's `train_step(state, images) -> (state, loss)` over
    `images` in shuffled batches (one epoch in quick mode); prints each epoch's loss per
    image. The step is compiled once for the full batches and once for the last one."""
    epochs = 1 if notebook_mode.quick() else epochs
    step = jax.jit(train_step)
    shuffle_key = jax.random.key(seed)
    for epoch in range(1, epochs + 1):
        order = np.asarray(epoch_permutation(jax.random.fold_in(shuffle_key, epoch),
                                             len(images)))
        total = 0.0
        for start in range(0, len(images), batch_size):
            state, loss = step(state, images[order[start:start + batch_size]])
            total += float(loss)
        print(f"epoch {epoch}: {total / len(images):.1f} nats per image")
    return state


def reconstruct(state_or_variables, images: np.ndarray, model: VAE | None = None
                ) -> np.ndarray:
    """The model's reconstructions of `images` in evaluation mode (the decoder applied to
    the mean): (N, 28, 28, 1) in [0, 1]. Takes a TrainState, or variables with `model`."""
    if isinstance(state_or_variables, TrainState):
        variables, apply = state_or_variables.variables, state_or_variables.apply_fn
    else:
        variables, apply = state_or_variables, (model or VAE()).apply
    mean, _ = apply(variables, images, train=False, method=VAE.encode)
    return np.asarray(jax.nn.sigmoid(apply(variables, mean, train=False, method=VAE.decode)))


def decoder(model: VAE, variables: dict) -> Callable[[jax.Array], jax.Array]:
    """`decode(z) -> logits` of a trained model in evaluation mode: (N, z_dim) ->
    (N, 28, 28, 1)."""
    return jax.jit(likelihood.decoder_fn(model, variables))


def log_weights(model: VAE, variables: dict, images: np.ndarray, key: jax.Array,
                samples: int) -> jax.Array:
    """The importance log-weights log p(x, z_k) - log q(z_k|x) of each image for K =
    `samples` draws from its posterior: (K, N) (`vae_jax.model.iwae`)."""
    mean, stddev = model.apply(variables, images, train=False, method=VAE.encode)
    return iwae.importance_log_weights(key, jnp.asarray(images), mean, stddev,
                                       decoder(model, variables), samples)


def show(*rows: tuple[str, np.ndarray], columns: int = 16):
    """Rows of images, each `(title, images (N, 28, 28, 1) in [0, 1])`, as one picture for
    the notebook."""
    from IPython.display import Image
    figure = grids.figure(figsize=(columns * 0.5, 0.75 * len(rows) * max(
        1, -(-len(rows[0][1]) // columns))))
    axes = figure.subplots(len(rows), 1, squeeze=False)[:, 0]
    for axis, (title, images) in zip(axes, rows):
        axis.imshow(grids.tile(np.asarray(images), columns=columns), cmap="gray", vmin=0,
                    vmax=1)
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return Image(buffer.getvalue())
