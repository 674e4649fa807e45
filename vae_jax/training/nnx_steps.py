"""Training the NNX VAE (`vae_jax.model.nnx_vae`): the linen trainer's step, in NNX.

`make_optimizer(model)` is the same optax Adam as `vae_jax.training.train_state`, held by an
`nnx.Optimizer`; `train_step(model, optimizer, images, key)` takes one step in place and
returns the batch metrics and the key to use next. From the same weights, batch and key it
computes what `vae_jax.training.steps.train_step` computes: the key is split the same way,
one part samples z, the other is kept.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from vae_jax.model import losses
from vae_jax.model.nnx_vae import VAE, BatchNorm
from vae_jax.training import train_state
from vae_jax.training.steps import COURSE_KL_WEIGHT


def make_optimizer(model: VAE, learning_rate: float = 2e-3) -> nnx.Optimizer:
    """Adam (`vae_jax.training.train_state.make_optimizer`) over the model's parameters."""
    return nnx.Optimizer(model, train_state.make_optimizer(learning_rate), wrt=nnx.Param)


def take_step(model: VAE, optimizer: nnx.Optimizer, images: jax.Array, key: jax.Array,
              kl_weight: optax.Schedule = COURSE_KL_WEIGHT) -> tuple[dict, jax.Array]:
    """One Adam step on a batch (B, 28, 28, C), in place; returns (batch metrics, next key).

    The metrics are the batch means of `loss` (the true negative ELBO), `reconstruction` and
    `kl`, before the update; the minimised loss weighs KL by `kl_weight(step)`. The model
    must be in training mode (`model.train()`, as a new model is).
    """
    check_trainable(model, images)
    key, sample_key = jax.random.split(key)

    def loss_fn(model):
        logits, mean, stddev = model(images, sample_key)
        return losses.vae_loss(logits, images, mean, stddev, kl_weight(optimizer.step.value))

    grads, metrics = nnx.grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return metrics, key


def check_trainable(model: VAE, images: jax.Array) -> None:
    """Raises ValueError unless `model` is in training mode and `images` is a batch of at
    least one image (B, H, W, C). Both are known while tracing: a jitted step checks once."""
    if any(module.use_running_average for _, module in nnx.iter_graph(model)
           if isinstance(module, BatchNorm)):
        raise ValueError("the model is in evaluation mode: its BatchNorm layers would use "
                         "their running statistics and never update them; call model.train() "
                         "before training (model.eval() again to evaluate)")
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a batch (B, 28, 28, C) with B >= 1, got shape "
                         f"{images.shape}")


train_step = nnx.jit(take_step, static_argnames="kl_weight")  # `take_step`, compiled
