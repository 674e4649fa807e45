"""Training and evaluation: the train state, the jitted steps, and the epoch loop.

Every random choice comes from one seed: `jax.random.key(seed)` is split into the
parameter-init key, the training key carried (and split at every step) in the train
state, the shuffle key (folded with the epoch number) and the evaluation key (likewise).

Two ways to run an epoch, with the same result:
* "steps": a Python loop over batches gathered on the host, one jitted `train_step` each;
  a progress bar follows the steps.
* "scan": the whole training set on the device and the epoch as one jitted `lax.scan`
  (shuffling on the device, donated state, no host synchronisation inside the epoch).
`epoch_mode="auto"` picks "steps" on CPU and "scan" on GPU/TPU.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from vae_jax import checkpoints, grids, input_pipeline, losses
from vae_jax.models import IMAGE_SIZE, VAE

EPOCH_MODES = ("auto", "steps", "scan")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A run's settings; the defaults are the course's recipe."""

    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 2e-3
    z_dim: int = 32
    seed: int = 0
    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = True
    train_split: str = "train"
    test_split: str = "test"
    implementation: str = "auto"  # convolution implementation, see layers.py
    epoch_mode: str = "auto"      # "steps", "scan" or "auto", see the module docstring

    def model_config(self) -> dict[str, Any]:
        return {"z_dim": self.z_dim, "im_chan": 1}


class TrainState(train_state.TrainState):
    """params, opt_state and step (from Flax), plus BatchNorm statistics and the PRNG key."""

    batch_stats: Any
    key: jax.Array


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


def make_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Adam with PyTorch's (and optax's) defaults: betas 0.9/0.999, eps 1e-8."""
    return optax.adam(learning_rate)


def create_train_state(model: VAE, optimizer: optax.GradientTransformation,
                       init_key: jax.Array, train_key: jax.Array) -> TrainState:
    """Initialises the model's variables and the optimizer's state."""
    param_key, noise_key = jax.random.split(init_key)
    dummy = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, model.im_chan), jnp.float32)
    variables = model.init(param_key, dummy, noise_key, train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             tx=optimizer,
                             batch_stats=variables["batch_stats"], key=train_key)


def train_step(state: TrainState, images: jax.Array) -> tuple[TrainState, dict]:
    """One Adam step on a batch (B, 28, 28, C); returns the new state and batch metrics.

    Metrics are the batch means (per image, before the update) of `loss`, `reconstruction`
    and `kl`. The state's key is split: one half samples z now, the other is kept.
    """
    key, sample_key = jax.random.split(state.key)

    def loss_fn(params):
        (logits, mean, stddev), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, images, sample_key,
            train=True, mutable=["batch_stats"])
        loss, metrics = losses.vae_loss(logits, images, mean, stddev)
        return loss, (metrics, updates["batch_stats"])

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats, key=key)
    return state, metrics


def eval_step(state: TrainState, images: jax.Array, key: jax.Array) -> dict:
    """Sums over a batch of the single-sample negative ELBO and its parts, in eval mode."""
    logits, mean, stddev = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, images, key, train=False)
    reconstruction = losses.reconstruction_loss(logits, images)
    kl = losses.kl_divergence(mean, stddev)
    return {"loss": (reconstruction + kl).sum(), "reconstruction": reconstruction.sum(),
            "kl": kl.sum()}


def make_train_step(max_traces: int = 2) -> Callable:
    """`train_step` jitted with its state donated, compiled at most `max_traces` times.

    A run needs two compilations: the full batch and the last, smaller one.
    """
    return jax.jit(chex.assert_max_traces(train_step, n=max_traces), donate_argnums=0)


def make_eval_step(max_traces: int = 2) -> Callable:
    return jax.jit(chex.assert_max_traces(eval_step, n=max_traces))


def make_train_epoch(batch_size: int, max_traces: int = 1) -> Callable:
    """The whole epoch as one jitted function of (state, images on device, epoch key).

    Returns (state, sums) where sums are the per-image metrics summed over the epoch. Data
    order and keys are the same as in the step-by-step loop of `train_epoch_steps`.
    """

    def train_epoch(state, images, epoch_key):
        num_examples = images.shape[0]
        order = input_pipeline.epoch_permutation(epoch_key, num_examples)
        num_full = num_examples // batch_size

        def body(state, batch_indices):
            state, metrics = train_step(state, images[batch_indices])
            return state, metrics

        state, metrics = jax.lax.scan(
            body, state, order[:num_full * batch_size].reshape(num_full, batch_size))
        sums = jax.tree.map(lambda m: m.sum() * batch_size, metrics)
        if num_examples % batch_size:
            state, last = train_step(state, images[order[num_full * batch_size:]])
            rest = num_examples - num_full * batch_size
            sums = jax.tree.map(lambda s, m: s + m * rest, sums, last)
        return state, sums

    return jax.jit(chex.assert_max_traces(train_epoch, n=max_traces), donate_argnums=0)


def train_epoch_steps(step_fn: Callable, state: TrainState, images: np.ndarray,
                      epoch_key: jax.Array, batch_size: int, progress: bool = False,
                      description: str = "") -> tuple[TrainState, dict]:
    """One epoch as a Python loop of jitted steps; returns (state, summed metrics)."""
    order = np.asarray(input_pipeline.epoch_permutation(epoch_key, images.shape[0]))
    slices = input_pipeline.batch_slices(images.shape[0], batch_size)
    sums = None
    with tqdm(total=images.shape[0], desc=description, unit="img", disable=not progress,
              leave=False, dynamic_ncols=True) as bar:
        for batch_slice in slices:
            batch = images[order[batch_slice]]
            state, metrics = step_fn(state, batch)
            weighted = jax.tree.map(lambda m: m * batch.shape[0], metrics)
            sums = weighted if sums is None else jax.tree.map(jnp.add, sums, weighted)
            bar.update(batch.shape[0])
            bar.set_postfix(loss=f"{float(metrics['loss']):.1f}")
    return state, sums


def evaluate(eval_fn: Callable, state: TrainState, images: np.ndarray, key: jax.Array,
             batch_size: int) -> dict[str, float]:
    """Means over `images` of the eval-mode single-sample negative ELBO and its parts."""
    sums = None
    for index, batch_slice in enumerate(input_pipeline.batch_slices(len(images), batch_size)):
        batch_sums = eval_fn(state, images[batch_slice], jax.random.fold_in(key, index))
        sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
    return {name: float(value) / len(images) for name, value in sums.items()}


def resolve_epoch_mode(epoch_mode: str) -> str:
    if epoch_mode not in EPOCH_MODES:
        raise ValueError(f"epoch_mode must be one of {EPOCH_MODES}, got {epoch_mode!r}")
    if epoch_mode == "auto":
        return "steps" if jax.default_backend() == "cpu" else "scan"
    return epoch_mode


def train_and_evaluate(config: TrainConfig, workdir: str, *, progress: bool = True,
                       log: Callable[[str], None] = print) -> TrainState:
    """Trains for `config.epochs` epochs, writing metrics, pictures and variables to `workdir`.

    Per epoch: a line of `metrics.jsonl`, `reconstructions_epoch{N}.png` and
    `samples_epoch{N}.png`. At the end: the variables (`vae_jax.load_variables(workdir)`).
    """
    train_images, _ = input_pipeline.load_split(
        config.dataset, config.train_split, config.data_dir, download=config.download)
    test_images, _ = input_pipeline.load_split(
        config.dataset, config.test_split, config.data_dir, download=config.download)
    os.makedirs(workdir, exist_ok=True)

    keys = RunKeys.from_seed(config.seed)
    model = VAE(z_dim=config.z_dim, implementation=config.implementation)
    state = create_train_state(model, make_optimizer(config.learning_rate), keys.init,
                               keys.train)
    epoch_mode = resolve_epoch_mode(config.epoch_mode)
    eval_fn = make_eval_step()
    if epoch_mode == "scan":
        epoch_fn = make_train_epoch(config.batch_size)
        device_images = jax.device_put(train_images)
    else:
        step_fn = make_train_step()
    picture_noise_key, prior_key = jax.random.split(keys.pictures)
    prior_z = jax.random.normal(prior_key, (64, config.z_dim))
    log(f"training on {jax.default_backend()} ({epoch_mode} epochs): {len(train_images)} "
        f"train / {len(test_images)} test images of {config.dataset}, batch {config.batch_size}")

    metrics_path = os.path.join(workdir, "metrics.jsonl")
    open(metrics_path, "w").close()
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        epoch_key = jax.random.fold_in(keys.shuffle, epoch)
        if epoch_mode == "scan":
            state, sums = epoch_fn(state, device_images, epoch_key)
        else:
            state, sums = train_epoch_steps(
                step_fn, state, train_images, epoch_key, config.batch_size,
                progress=progress, description=f"epoch {epoch}/{config.epochs}")
        train_metrics = {name: float(value) / len(train_images) for name, value in sums.items()}
        train_seconds = time.perf_counter() - start
        test_metrics = evaluate(eval_fn, state, test_images,
                                jax.random.fold_in(keys.eval, epoch), config.batch_size)
        write_pictures(state, test_images[:25], picture_noise_key, prior_z, workdir, epoch)
        record = {
            "epoch": epoch, "step": int(state.step),
            "train_loss": train_metrics["loss"],
            "train_reconstruction": train_metrics["reconstruction"],
            "train_kl": train_metrics["kl"],
            "test_loss": test_metrics["loss"],
            "test_reconstruction": test_metrics["reconstruction"],
            "test_kl": test_metrics["kl"],
            "images_per_sec": len(train_images) / train_seconds,
            "seconds": time.perf_counter() - start,
        }
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        log(f"epoch {epoch:3d}  train loss {record['train_loss']:8.2f}  test loss "
            f"{record['test_loss']:8.2f} (rec {record['test_reconstruction']:.2f} + kl "
            f"{record['test_kl']:.2f})  {record['images_per_sec']:7.0f} img/s  "
            f"{record['seconds']:.1f} s")
    checkpoints.save_variables(
        workdir, {"params": state.params, "batch_stats": state.batch_stats},
        config.model_config())
    return state


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _reconstruct_and_sample(apply_fn, variables, images, key, prior_z):
    logits, _, _ = apply_fn(variables, images, key, train=False)
    sample_logits = apply_fn(variables, prior_z, train=False, method=VAE.decode)
    return jax.nn.sigmoid(logits), jax.nn.sigmoid(sample_logits)


def write_pictures(state: TrainState, images: np.ndarray, key: jax.Array, prior_z: jax.Array,
                   workdir: str, epoch: int) -> None:
    """Writes the epoch's reconstruction grid and prior samples as PNG files."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    reconstructions, samples = _reconstruct_and_sample(
        state.apply_fn, variables, images, key, prior_z)
    grids.save_reconstructions(
        os.path.join(workdir, f"reconstructions_epoch{epoch}.png"), images,
        np.asarray(reconstructions), title=f"epoch {epoch}")
    grids.save_samples(os.path.join(workdir, f"samples_epoch{epoch}.png"),
                          np.asarray(samples), title=f"samples from the prior, epoch {epoch}")
