"""A trained VAE's likelihood in nats: the IWAE bound, and the whole evaluation's report.

`evaluate_model` gives, per image and in nats, in eval mode (BatchNorm running averages):

* the negative ELBO (`vae_jax.evaluation.elbo`), mean and standard error;
* the IWAE bound (`vae_jax.model.iwae`): its negative, `nll_iwae`, is an upper bound on
  -log p(x) that tightens as K grows (K = 1 is the ELBO; K = 5000 is the literature's NLL
  estimate);
* the KL per latent dimension (mean over the images) and the active units
  (`vae_jax.model.metrics`).

One key gives a whole evaluation: it is split into the key of the binarization, that of
the ELBO's sample and that of the IWAE samples; the last two are folded with each image's
index in the split (and the IWAE's with each sample's), so the numbers do not depend on
the batch size, the chunk size or the number of devices and processes, over which the
batches are split (`vae_jax.runtime.mesh`). With `binarize_mode="dynamic"` each image is
replaced, once, by a Bernoulli(pixel) draw; the encoder sees it and it is the target, so the
numbers are log-likelihoods of binary images, comparable with the literature's dynamically
binarized MNIST. With the course's grayscale targets the BCE includes each pixel's own
entropy and is not the log-probability of anything.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.evaluation.elbo import (
    DEFAULT_BATCH_SIZE,
    KEY_SPEC,
    ElboPass,
    EvaluationError,
    array_spec,
    elbo_step,
    evaluation_keys,
    neg_elbo,
    padded_batch_size,
    padded_batches,
)
from vae_jax.model import iwae, losses, metrics
from vae_jax.model.vae import VAE, variable_shapes
from vae_jax.runtime.errors import INT32_MAX
from vae_jax.runtime.mesh import DataParallel, host
from vae_jax.runtime.progress import tqdm

DEFAULT_IWAE_SAMPLES = 5000
DECODES_PER_CALL = 2000  # default IWAE chunk: about this many decoder images per step
MAX_IWAE_SAMPLES = INT32_MAX  # sample indices are int32


@functools.lru_cache(maxsize=None)
def iwae_step(model: VAE, batch_shape: tuple[int, ...], num_samples: int, chunk_size: int,
               parallel: DataParallel) -> Callable:
    """(variables, images, mean, stddev, image indices, key) -> the IWAE log p(x) per
    image, compiled for `parallel`'s mesh."""

    def run(variables, images, mean, stddev, indices, key):
        return iwae.iwae_log_likelihood(iwae.image_keys(key, indices), images, mean, stddev,
                                        decoder_fn(model, variables), num_samples, chunk_size)

    replicated, split = parallel.replicated, parallel.batch
    latent_spec = array_spec((batch_shape[0], model.z_dim))
    return jax.jit(run, in_shardings=(replicated, split, split, split, split, replicated),
                   out_shardings=split).lower(
        variable_shapes(model), array_spec(batch_shape), latent_spec, latent_spec,
        array_spec(batch_shape[:1], jnp.int32), KEY_SPEC).compile()


def decoder_fn(model: VAE, variables: dict) -> iwae.DecodeFn:
    """z (N, z_dim) -> logits (N, 28, 28, im_chan), eval mode."""
    return lambda z: model.apply(variables, z, train=False, method=VAE.decode)


@functools.lru_cache(maxsize=None)
def jitted_decoder(model: VAE) -> Callable[[dict, jax.Array], jax.Array]:
    """`(variables, z) -> logits`, jitted once per model (eval mode)."""
    return jax.jit(lambda variables, z: decoder_fn(model, variables)(z))


def iwae_log_likelihoods(model: VAE, variables: dict, elbo: ElboPass, key: jax.Array, *,
                         num_samples: int, batch_size: int, chunk_size: int,
                         progress: bool = False, parallel: DataParallel | None = None
                         ) -> np.ndarray:
    """The IWAE estimate of log p(x) (N,) for the images of an `ElboPass`, reusing its
    posterior; sample k of image i comes from the IWAE key of `key` folded with i, then k.
    Batches split over `parallel`'s mesh (default: every device)."""
    parallel = parallel or DataParallel.create()
    _, _, iwae_key = evaluation_keys(key)
    batch_size = padded_batch_size(batch_size, len(elbo.targets), parallel)
    step = iwae_step(model, (batch_size,) + elbo.targets.shape[1:], num_samples, chunk_size,
                      parallel)
    variables, iwae_key = parallel.replicate((variables, iwae_key))
    # Padding rows get stddev 1, so that they stay finite; they are dropped.
    stddevs = np.concatenate([elbo.stddev, np.ones_like(elbo.stddev[:batch_size])])
    indices = np.arange(len(elbo.targets), dtype=np.int32)
    log_px = []
    with tqdm(total=len(elbo.targets), disable=not progress, unit="img", leave=False,
              desc=f"IWAE K={num_samples}", file=sys.stderr) as bar:
        for index, count, (images, mean, batch_indices) in padded_batches(
                (elbo.targets, elbo.mean, indices), batch_size):
            stddev = stddevs[index * batch_size:(index + 1) * batch_size]
            values = host(step(variables, *map(parallel.split, (images, mean, stddev,
                                                                 batch_indices)), iwae_key))
            log_px.append(values[:count])
            bar.update(count)
    return np.concatenate(log_px)


def _json_numbers(values: tuple[float, ...]) -> tuple[float | None, ...]:
    """None for a number that is not finite (a standard error of one image): JSON has none."""
    return tuple(value if math.isfinite(value) else None for value in values)


def default_chunk_size(num_samples: int, batch_size: int) -> int:
    """Samples per decoder call: at most about DECODES_PER_CALL decoded images and at most
    K, with the K samples split as evenly as that allows, so that the last, partly masked
    chunk wastes little (K = 50 at batch 100: chunks of 17, not 20, 20 and a masked 10)."""
    largest = max(1, min(num_samples, DECODES_PER_CALL // batch_size))
    chunks = -(-num_samples // largest)
    return -(-num_samples // chunks)


def evaluate_model(model: VAE, variables: dict, images: np.ndarray, *, seed: int = 0,
                   iwae_samples: int = DEFAULT_IWAE_SAMPLES, batch_size: int = DEFAULT_BATCH_SIZE,
                   chunk_size: int | None = None, binarize_mode: str = "none",
                   progress: bool = False, parallel: DataParallel | None = None) -> dict:
    """All the numbers for `images` (N, 28, 28, C) in [0, 1]; see the module docstring.

    Every draw comes from `jax.random.key(seed)` (`evaluation_keys`); the batches are split
    over `parallel`'s mesh (default: every device of every process).
    """
    if iwae_samples < 1:
        raise EvaluationError(f"--iwae-samples must be at least 1, got {iwae_samples}")
    start = time.perf_counter()
    parallel = parallel or DataParallel.create()
    key = jax.random.key(seed)
    num_images = len(images)
    batch_size = padded_batch_size(batch_size, num_images, parallel)
    chunk_size = min(chunk_size or default_chunk_size(iwae_samples, batch_size), iwae_samples)
    batch_shape = (batch_size,) + images.shape[1:]
    # Compiled first (every batch is padded to one shape), so that the timings of the
    # passes below are run time only.
    elbo_step(model, batch_shape, parallel)
    iwae_step(model, batch_shape, iwae_samples, chunk_size, parallel)
    compile_seconds = time.perf_counter() - start

    elbo_start = time.perf_counter()
    elbo = neg_elbo(model, variables, images, key, batch_size=batch_size,
                    binarize_mode=binarize_mode, parallel=parallel)
    elbo_seconds = time.perf_counter() - elbo_start

    iwae_start = time.perf_counter()
    log_px = iwae_log_likelihoods(model, variables, elbo, key, num_samples=iwae_samples,
                                  batch_size=batch_size, chunk_size=chunk_size,
                                  progress=progress, parallel=parallel)
    iwae_seconds = time.perf_counter() - iwae_start

    if not (np.all(np.isfinite(elbo.neg_elbo)) and np.all(np.isfinite(log_px))):
        raise EvaluationError("the model gives non-finite values on these images")
    neg_elbo_mean, neg_elbo_stderr = _json_numbers(metrics.mean_and_stderr(elbo.neg_elbo))
    nll, nll_stderr = _json_numbers(metrics.mean_and_stderr(-log_px))
    activity = metrics.latent_activity(elbo.mean)
    kl_dims = losses.kl_per_dimension(elbo.mean.astype(np.float64),
                                      elbo.stddev.astype(np.float64)).mean(axis=0)
    return {
        "neg_elbo": neg_elbo_mean, "neg_elbo_stderr": neg_elbo_stderr,
        "reconstruction": float(elbo.reconstruction.mean()), "kl": float(elbo.kl.mean()),
        "nll_iwae": nll, "nll_iwae_stderr": nll_stderr, "iwae_samples": iwae_samples,
        "iwae_chunk": chunk_size,
        "active_units": int(np.sum(activity > metrics.ACTIVE_UNIT_THRESHOLD)),
        "active_unit_threshold": metrics.ACTIVE_UNIT_THRESHOLD,
        "z_dim": int(elbo.mean.shape[1]),
        "kl_per_dim": [float(value) for value in kl_dims],
        "latent_activity": [float(value) for value in activity],
        "num_images": num_images, "binarize": binarize_mode, "seed": seed,
        "batch_size": batch_size, "backend": jax.default_backend(),
        "devices": parallel.device_count, "processes": parallel.process_count,
        "seconds_compile": compile_seconds, "seconds_elbo": elbo_seconds,
        "seconds_iwae": iwae_seconds,
        "iwae_decodes_per_sec": num_images * iwae_samples / iwae_seconds,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------
# Command line.


def format_bounds(result: dict) -> list[str]:
    """The negative ELBO and IWAE lines of a summary (also used by pool_evaluations)."""
    elbo_label = "negative ELBO (1 sample)"
    iwae_label = f"NLL bound (IWAE, K={result['iwae_samples']})"
    width = max(len(elbo_label), len(iwae_label))

    def stderr(value):  # None for a single image
        return "n/a" if value is None else f"{value:.2f}"

    return [
        f"  {elbo_label:<{width}} {result['neg_elbo']:8.2f} ± {stderr(result['neg_elbo_stderr'])} "
        f"nats  (reconstruction {result['reconstruction']:.2f} + KL {result['kl']:.2f})",
        f"  {iwae_label:<{width}} {result['nll_iwae']:8.2f} ± {stderr(result['nll_iwae_stderr'])} "
        "nats",
    ]


def model_source(result: dict) -> str:
    """Where an evaluation's model came from: its run directory, or its pretrained name."""
    if result.get("pretrained"):
        return f"the pretrained model {result['pretrained']}"
    return str(result["workdir"])


def format_summary(result: dict) -> str:
    targets = ("dynamically binarized images (one Bernoulli(pixel) draw each): "
               "log-likelihoods of binary images, the literature's measure"
               if result["binarize"] == "dynamic" else
               "grayscale targets: the BCE includes the pixels' own entropy, so these are "
               "not log-likelihoods")
    kl_sorted = sorted(result["kl_per_dim"], reverse=True)
    lines = [
        f"{result['dataset']} {result['split']}: {result['num_images']} images, model z_dim="
        f"{result['z_dim']} from {model_source(result)}",
        f"  {targets}",
        *format_bounds(result),
        f"  active units {result['active_units']} of {result['z_dim']} (variance of E[z|x] > "
        f"{result['active_unit_threshold']})",
        "  KL per dimension (nats), largest first: "
        + " ".join(f"{value:.2f}" for value in kl_sorted),
        f"  time {result['seconds']:.1f} s (compile {result['seconds_compile']:.1f} s, ELBO "
        f"{result['seconds_elbo']:.1f} s, IWAE {result['seconds_iwae']:.1f} s, "
        f"{result['iwae_decodes_per_sec']:.0f} decodes/s on {result['backend']}, "
        f"{result['devices']} device(s), {result['processes']} process(es))",
    ]
    return "\n".join(lines)
