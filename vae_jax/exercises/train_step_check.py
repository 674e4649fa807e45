"""The check of the `train_step` exercise: one course Adam step, compared with the library's
own step (`vae_jax.training.steps`) from the same state, batch and key.

A learner may split the state's key into two or three and draw the noise with any part,
as long as the new state keeps another part: the check finds which part drew the noise from
the loss the step returns, then asks the library for the step with those keys.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import numpy as np

from vae_jax.exercises.answers import Mistake, array, call, call_jitted, close, key_data, pair
from vae_jax.exercises.registry import exercise
from vae_jax.model import losses
from vae_jax.model.vae import VAE
from vae_jax.training import steps
from vae_jax.training.config import TrainConfig
from vae_jax.training.schedules import COURSE_KL_WEIGHT
from vae_jax.training.train_state import TrainState, create_train_state, make_optimizer

BATCH = 8
# A parameter of the learner's step may differ from the library's by more than this in a
# few elements (those whose gradient is float rounding noise, as the biases before
# BatchNorm), not in more than MAX_DIFFERING of them.
PARAMETER_TOLERANCE = 1e-5
MAX_DIFFERING = 0.01


@functools.cache
def _initial_state() -> TrainState:
    """The course's model and Adam, initialised from fixed keys."""
    keys = jax.random.split(jax.random.key(71))
    return create_train_state(VAE(), make_optimizer(TrainConfig().learning_rate), *keys)


@functools.cache
def _course_loss() -> Callable:
    """(state, images, sample key, train) -> the course's batch loss with that noise."""
    def loss_of(state, images, sample_key, train):
        (logits, mean, stddev), _ = state.apply_fn(state.variables, images, sample_key,
                                                   train=train, mutable=["batch_stats"])
        return losses.vae_loss(logits, images, mean, stddev)[0]
    return jax.jit(loss_of, static_argnums=3)


@functools.cache
def _library_step() -> Callable:
    """(state, images, sample key, kept key) -> the library's step with those keys."""
    def step(state, images, sample_key, kept_key):
        grads, _, batch_stats = steps.elbo_gradients(state, images, sample_key,
                                                     COURSE_KL_WEIGHT)
        return state.apply_gradients(grads=grads, batch_stats=batch_stats, key=kept_key)
    return jax.jit(step)


def _images() -> jax.Array:
    return jax.random.uniform(jax.random.key(72), (BATCH, 28, 28, 1))


def _run(fn: Callable, state: TrainState, images: jax.Array):
    """The learner's step under jax.jit; if that fails, run eagerly to tell a wrong step
    (the learner's error as the hint) from one that only cannot be compiled."""
    ex = exercise("train_step")
    try:
        return call_jitted(ex, fn, state, images)
    except Mistake as jit_mistake:
        if "not under jax.jit" not in str(jit_mistake):
            raise
        call(ex, fn, state, images)  # raises the learner's own error, if any
        raise


def _same(first, second) -> bool:
    return all(close(a, b, rtol=0, atol=0) for a, b in
               zip(jax.tree.leaves(first), jax.tree.leaves(second)))


def check_train_step(fn: Callable) -> None:
    ex = exercise("train_step")
    state, images = _initial_state(), _images()
    new_state, value = pair(ex, _run(fn, state, images), "new_state, loss")
    if not all(hasattr(new_state, name) for name in ("params", "batch_stats", "step", "key")):
        raise Mistake("new_state should be the TrainState that state.apply_gradients(grads=..., "
                      "batch_stats=..., key=...) returns: it carries the parameters, the "
                      "optimizer's moments, the step, BatchNorm's statistics and the key "
                      "together")
    value = float(array(value, "the loss", (), explain_shape=lambda got: (
        "the loss returned should be one number, the course's batch loss (summed over the "
        "images) that the step minimises" if got == (BATCH,) else None)))
    if int(np.asarray(new_state.step)) != int(state.step) + 1:
        raise Mistake("the step counter did not advance by one: state.apply_gradients updates "
                      "the parameters, the optimizer's moments and the step together")
    old_key, new_key = key_data(state.key), key_data(new_state.key)
    if np.array_equal(new_key, old_key):
        raise Mistake("the state's key was not split: the next step would draw exactly the "
                      "same noise; split state.key, draw the noise with one part and keep "
                      "another in the new state (apply_gradients(..., key=...))")
    # Which key drew the noise: the one whose course loss the step returned.
    loss_of = _course_loss()
    splits = [list(jax.random.split(state.key, parts)) for parts in (2, 3)]
    found = None
    for keys in splits:
        for index, sample_key in enumerate(keys):
            if close(value, loss_of(state, images, sample_key, True), rtol=1e-5, atol=1e-3):
                found = (sample_key, [key for other, key in enumerate(keys) if other != index])
                break
        if found:
            break
    if found is None:
        candidates = [key for keys in splits for key in keys]
        if close(value, loss_of(state, images, state.key, True), rtol=1e-5, atol=1e-3):
            raise Mistake("the noise was drawn with state.key itself, the key that is also "
                          "split for the next step: a key used to draw must not be used again; "
                          "split it first, draw with one part, keep another")
        if any(close(value, loss_of(state, images, key, False), rtol=1e-5, atol=1e-3)
               for key in candidates):
            raise Mistake("the model ran in evaluation mode: in training BatchNorm normalises "
                          "with the batch's own statistics and updates its running averages, "
                          "so apply it with train=True and mutable=['batch_stats']")
        if any(close(value * BATCH, loss_of(state, images, key, True), rtol=1e-5, atol=1e-3)
               for key in candidates):
            raise Mistake("the step returns the loss averaged over the images; return the "
                          "batch loss it minimises, the course's sum over the images")
        raise Mistake("the loss returned is not the course's loss of this batch (the sum over "
                      "the images of reconstruction + KL) with noise drawn from a part of "
                      "jax.random.split(state.key); if your step uses your own loss, make "
                      "its check pass first")
    sample_key, kept_keys = found
    if np.array_equal(new_key, key_data(sample_key)):
        raise Mistake("the key kept for the next step is the one this step drew its noise "
                      "with, so the next step's noise is not independent of this one's: keep "
                      "another part of the split")
    kept = next((key for key in kept_keys if np.array_equal(new_key, key_data(key))), None)
    if kept is None:
        raise Mistake("the new state's key should be the part of jax.random.split(state.key) "
                      "that was not used to draw the noise")
    reference = _library_step()(state, images, sample_key, kept)
    if _same(new_state.batch_stats, state.batch_stats):
        raise Mistake("BatchNorm's running statistics were not updated: apply the model with "
                      "mutable=['batch_stats'] and pass the statistics it returns to "
                      "state.apply_gradients(batch_stats=...), or evaluation mode would use "
                      "the statistics of an untrained network")
    if not all(close(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(
            jax.tree.leaves(new_state.batch_stats), jax.tree.leaves(reference.batch_stats))):
        raise Mistake("BatchNorm's new statistics differ from those of one training-mode pass "
                      "over this batch: pass the batch_stats the model returns with "
                      "mutable=['batch_stats'] to apply_gradients")
    if _same(new_state.params, state.params):
        raise Mistake("the parameters did not change: take jax.grad of the loss with respect "
                      "to state.params and apply it with state.apply_gradients(grads=...)")
    differing = sum(int((np.abs(np.asarray(a) - np.asarray(b)) > PARAMETER_TOLERANCE).sum())
                    for a, b in zip(jax.tree.leaves(new_state.params),
                                    jax.tree.leaves(reference.params)))
    total = sum(leaf.size for leaf in jax.tree.leaves(reference.params))
    if differing > MAX_DIFFERING * total:
        raise Mistake(f"{differing / total:.0%} of the parameters differ from one Adam step on "
                      f"the course's loss: take the gradient of that loss (summed over the "
                      f"batch) with respect to state.params and apply it with "
                      f"state.apply_gradients, whose optimizer is the course's Adam")
