"""The negative ELBO of images, batch by batch, on every device: what training reports as
its test loss each epoch and what `vae_jax.evaluation.likelihood` builds on; and `encode`.

Per image, in nats, in eval mode: binary cross-entropy of the decoded single sample
z ~ q(z|x), summed over pixels, plus the closed-form KL(q(z|x) || N(0, I)). Batches are padded
to a size the devices share and split over the mesh (`vae_jax.runtime.mesh`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.model import iwae, losses
from vae_jax.model.binarize import BINARIZE_MODES, binarize
from vae_jax.model.vae import VAE, variable_shapes
from vae_jax.runtime.errors import InputError, is_positive_int
from vae_jax.runtime.mesh import DataParallel, host

DEFAULT_BATCH_SIZE = 100


class EvaluationError(InputError):
    """An option or a model that cannot be evaluated."""


def check_count(value, name: str) -> None:
    """Raises EvaluationError unless `value` (named `name`) is a positive integer."""
    if not is_positive_int(value):
        raise EvaluationError(f"{name} must be a positive integer, got {value!r}")


def check_images(images) -> None:
    """Raises EvaluationError unless `images` is a non-empty (N, 28, 28, C) array."""
    shape = np.shape(images)
    if len(shape) != 4 or shape[0] == 0 or shape[1:3] != (28, 28):
        raise EvaluationError(f"images must be a non-empty (N, 28, 28, channels) array, got "
                              f"shape {shape}")


# ---------------------------------------------------------------------------------------------
# Eval-mode computations, jitted (and compiled) once per model and batch shape.


KEY_SPEC = jax.eval_shape(lambda: jax.random.key(0))


def array_spec(shape: tuple[int, ...], dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


@functools.lru_cache(maxsize=None)
def elbo_step(model: VAE, batch_shape: tuple[int, ...], parallel: DataParallel) -> Callable:
    """(variables, images, image indices, key) -> per-image ELBO terms and the posterior,
    compiled for `parallel`'s mesh (the batch split over it)."""

    def run(variables, images, indices, key):
        mean, stddev = model.apply(variables, images, train=False, method=VAE.encode)
        keys = iwae.image_keys(key, indices)
        z = iwae.sample_latents(keys, mean, stddev, jnp.zeros((1,), jnp.int32))[0]
        logits = model.apply(variables, z, train=False, method=VAE.decode)
        reconstruction = losses.reconstruction_loss(logits, images)
        kl = losses.kl_divergence(mean, stddev)
        return {"neg_elbo": reconstruction + kl, "reconstruction": reconstruction, "kl": kl,
                "mean": mean, "stddev": stddev}

    replicated, split = parallel.replicated, parallel.batch
    return jax.jit(run, in_shardings=(replicated, split, split, replicated),
                   out_shardings=split).lower(
        variable_shapes(model), array_spec(batch_shape), array_spec(batch_shape[:1], jnp.int32),
        KEY_SPEC).compile()


@functools.lru_cache(maxsize=None)
def _jitted_encoder(model: VAE):
    return jax.jit(lambda variables, images: model.apply(variables, images, train=False,
                                                         method=VAE.encode))


def padded_batches(arrays: tuple[np.ndarray, ...], batch_size: int):
    """(index, count, padded arrays) for consecutive batches; the last is zero-padded to
    `batch_size`, so one compilation serves every batch. `count` rows are real."""
    total = len(arrays[0])
    for index, start in enumerate(range(0, total, batch_size)):
        count = min(batch_size, total - start)
        batch = []
        for array in arrays:
            part = array[start:start + count]
            if count < batch_size:
                pad = np.zeros((batch_size - count,) + part.shape[1:], part.dtype)
                part = np.concatenate([part, pad])
            batch.append(part)
        yield index, count, tuple(batch)


def encode(model: VAE, variables: dict, images: np.ndarray, batch_size: int = 500
           ) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and standard deviations (N, z_dim) of `images`, eval mode."""
    check_images(images)
    check_count(batch_size, "batch_size")
    run = _jitted_encoder(model)
    means, stddevs = [], []
    for _, count, (batch,) in padded_batches((images,), min(batch_size, len(images))):
        mean, stddev = jax.device_get(run(variables, batch))
        means.append(mean[:count])
        stddevs.append(stddev[:count])
    return np.concatenate(means), np.concatenate(stddevs)


# ---------------------------------------------------------------------------------------------
# Passes over a dataset.


def evaluation_keys(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The keys of one evaluation: (binarization, ELBO sample, IWAE samples)."""
    binarize_key, elbo_key, iwae_key = jax.random.split(key, 3)
    return binarize_key, elbo_key, iwae_key


@dataclasses.dataclass(frozen=True)
class ElboPass:
    """The single-sample negative ELBO of each image and what produced it (numpy arrays).

    targets (N, 28, 28, C): the images the encoder saw and the decoder was scored on;
    neg_elbo, reconstruction, kl (N,): per image, in nats; mean, stddev (N, z): q(z|x).
    """

    targets: np.ndarray
    neg_elbo: np.ndarray
    reconstruction: np.ndarray
    kl: np.ndarray
    mean: np.ndarray
    stddev: np.ndarray

    def averages(self) -> dict[str, float]:
        """Means over the images: `loss` (the negative ELBO), `reconstruction`, `kl`."""
        return {"loss": float(self.neg_elbo.mean()),
                "reconstruction": float(self.reconstruction.mean()),
                "kl": float(self.kl.mean())}


def padded_batch_size(batch_size: int, num_images: int, parallel: DataParallel) -> int:
    """`batch_size` (at most the images there are), rounded up to split evenly over the
    devices: the padding rows are computed and dropped."""
    size = min(batch_size, num_images)
    return -(-size // parallel.device_count) * parallel.device_count


def neg_elbo(model: VAE, variables: dict, images: np.ndarray, key: jax.Array, *,
             batch_size: int, binarize_mode: str = "none",
             parallel: DataParallel | None = None) -> ElboPass:
    """The negative ELBO of every image (N, 28, 28, C) in [0, 1], in eval mode.

    The one computation behind training's per-epoch test loss and `evaluate`'s negative
    ELBO. `key` is the evaluation's key (`evaluation_keys`): with `binarize_mode="dynamic"`
    the images are replaced by one Bernoulli(pixel) draw each, and image i's sample of z
    comes from the ELBO key folded with i, so the result does not depend on `batch_size`
    or on the devices. The batches are split over `parallel`'s mesh (default: every
    device) and padded to one size, so one compilation serves them all.
    """
    if binarize_mode not in BINARIZE_MODES:
        raise EvaluationError(f"binarize must be one of {BINARIZE_MODES}, got {binarize_mode!r}")
    check_images(images)
    check_count(batch_size, "batch_size")
    parallel = parallel or DataParallel.create()
    binarize_key, elbo_key, _ = evaluation_keys(key)
    targets = np.asarray(images, np.float32)
    if binarize_mode == "dynamic":
        targets = np.asarray(binarize(binarize_key, targets))
    batch_size = padded_batch_size(batch_size, len(targets), parallel)
    step = elbo_step(model, (batch_size,) + targets.shape[1:], parallel)
    variables, elbo_key = parallel.replicate((variables, elbo_key))
    indices = np.arange(len(targets), dtype=np.int32)
    parts: dict[str, list[np.ndarray]] = {}
    for _, count, (batch, batch_indices) in padded_batches((targets, indices), batch_size):
        outputs = host(step(variables, parallel.split(batch), parallel.split(batch_indices),
                            elbo_key))
        for name, values in outputs.items():
            parts.setdefault(name, []).append(values[:count])
    return ElboPass(targets=targets, **{name: np.concatenate(values)
                                        for name, values in parts.items()})
