"""Evaluating a trained VAE in nats: negative ELBO, importance-weighted NLL bound, latent use.

`python -m vae_jax.evaluate --workdir RUN [--iwae-samples 5000] [--binarize dynamic] [--json]`

Everything runs in eval mode (BatchNorm running averages), per image, in nats:

* negative ELBO (`neg_elbo`): binary cross-entropy of the decoded single sample z ~ q(z|x),
  summed over pixels, plus the closed-form KL(q(z|x) || N(0, I)). Training's per-epoch
  `test_loss` in metrics.jsonl is the same function's mean. Mean and standard error over
  the images.
* IWAE bound (`vae_jax.iwae`): its negative, `nll_iwae`, is an upper bound on -log p(x)
  that tightens as K grows (K = 1 is the ELBO; K = 5000 is the literature's NLL estimate).
* KL per latent dimension (mean over the images) and active units (`vae_jax.metrics`).

One key gives a whole evaluation: it is split into the key of the binarization, that of
the ELBO's sample and that of the IWAE samples; the last two are folded with each image's
index in the split (and the IWAE's with each sample's), so the numbers do not depend on
the batch size, the chunk size or the number of devices and processes, over which the
batches are split (`vae_jax.parallel`).
With `--binarize dynamic` (the default for a run trained with it) each image is replaced,
once, by a Bernoulli(pixel) draw; the encoder sees it and it is the target, so the numbers
are log-likelihoods of binary images, comparable with the literature's dynamically
binarized MNIST. With the course's grayscale targets the BCE includes each pixel's own
entropy and is not the log-probability of anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from vae_jax import cli, iwae, losses, metrics
from vae_jax.binarize import BINARIZE_MODES, binarize
from vae_jax.checkpoints import load_model
from vae_jax.config import is_positive_int
from vae_jax.errors import InputError
from vae_jax.input_pipeline import load_split
from vae_jax.models import VAE, variable_shapes
from vae_jax.parallel import DataParallel, host, is_main_process

DEFAULT_IWAE_SAMPLES = 5000
DEFAULT_BATCH_SIZE = 100
DECODES_PER_CALL = 2000  # default IWAE chunk: about this many decoder images per step
MAX_IWAE_SAMPLES = 2**31 - 1  # sample indices are int32


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


_KEY_SPEC = jax.eval_shape(lambda: jax.random.key(0))


def _spec(shape: tuple[int, ...], dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


@functools.lru_cache(maxsize=None)
def _elbo_step(model: VAE, batch_shape: tuple[int, ...], parallel: DataParallel) -> Callable:
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
        variable_shapes(model), _spec(batch_shape), _spec(batch_shape[:1], jnp.int32),
        _KEY_SPEC).compile()


@functools.lru_cache(maxsize=None)
def iwae_step(model: VAE, batch_shape: tuple[int, ...], num_samples: int, chunk_size: int,
               parallel: DataParallel) -> Callable:
    """(variables, images, mean, stddev, image indices, key) -> the IWAE log p(x) per
    image, compiled for `parallel`'s mesh."""

    def run(variables, images, mean, stddev, indices, key):
        return iwae.iwae_log_likelihood(iwae.image_keys(key, indices), images, mean, stddev,
                                        decoder_fn(model, variables), num_samples, chunk_size)

    replicated, split = parallel.replicated, parallel.batch
    latent_spec = _spec((batch_shape[0], model.z_dim))
    return jax.jit(run, in_shardings=(replicated, split, split, split, split, replicated),
                   out_shardings=split).lower(
        variable_shapes(model), _spec(batch_shape), latent_spec, latent_spec,
        _spec(batch_shape[:1], jnp.int32), _KEY_SPEC).compile()


def decoder_fn(model: VAE, variables: dict) -> iwae.DecodeFn:
    """z (N, z_dim) -> logits (N, 28, 28, im_chan), eval mode."""
    return lambda z: model.apply(variables, z, train=False, method=VAE.decode)


@functools.lru_cache(maxsize=None)
def jitted_decoder(model: VAE) -> Callable[[dict, jax.Array], jax.Array]:
    """`(variables, z) -> logits`, jitted once per model (eval mode)."""
    return jax.jit(lambda variables, z: decoder_fn(model, variables)(z))


@functools.lru_cache(maxsize=None)
def _jitted_encoder(model: VAE):
    return jax.jit(lambda variables, images: model.apply(variables, images, train=False,
                                                         method=VAE.encode))


def _padded_batches(arrays: tuple[np.ndarray, ...], batch_size: int):
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
    for _, count, (batch,) in _padded_batches((images,), min(batch_size, len(images))):
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
    step = _elbo_step(model, (batch_size,) + targets.shape[1:], parallel)
    variables, elbo_key = parallel.replicate((variables, elbo_key))
    indices = np.arange(len(targets), dtype=np.int32)
    parts: dict[str, list[np.ndarray]] = {}
    for _, count, (batch, batch_indices) in _padded_batches((targets, indices), batch_size):
        outputs = host(step(variables, parallel.split(batch), parallel.split(batch_indices),
                            elbo_key))
        for name, values in outputs.items():
            parts.setdefault(name, []).append(values[:count])
    return ElboPass(targets=targets, **{name: np.concatenate(values)
                                        for name, values in parts.items()})


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
        for index, count, (images, mean, batch_indices) in _padded_batches(
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
    _elbo_step(model, batch_shape, parallel)
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


def format_summary(result: dict) -> str:
    targets = ("dynamically binarized images (one Bernoulli(pixel) draw each): "
               "log-likelihoods of binary images, the literature's measure"
               if result["binarize"] == "dynamic" else
               "grayscale targets: the BCE includes the pixels' own entropy, so these are "
               "not log-likelihoods")
    kl_sorted = sorted(result["kl_per_dim"], reverse=True)
    lines = [
        f"{result['dataset']} {result['split']}: {result['num_images']} images, model z_dim="
        f"{result['z_dim']} from {result['workdir']}",
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


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(prog=cli.program_name("python -m vae_jax.evaluate"),
                               description="Evaluate a trained VAE in nats on a tfds split.")
    cli.add_model_flags(parser)
    parser.add_argument("--iwae-samples", type=cli.bounded_int(1, MAX_IWAE_SAMPLES),
                        default=DEFAULT_IWAE_SAMPLES,
                        metavar="K", help="importance samples per image for the NLL bound "
                                          f"(default {DEFAULT_IWAE_SAMPLES})")
    parser.add_argument("--iwae-chunk", type=cli.bounded_int(1, MAX_IWAE_SAMPLES), default=None,
                        metavar="S",
                        help="IWAE samples per decoder call (default: about "
                             f"{DECODES_PER_CALL} decoded images per call)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=DEFAULT_BATCH_SIZE,
                        help=f"images per batch, split over the devices (default "
                             f"{DEFAULT_BATCH_SIZE})")
    parser.add_argument("--devices", type=cli.positive_int, default=None, metavar="N",
                        help="use the first N devices (default: all)")
    cli.add_distributed_flags(parser)
    cli.add_binarize_flags(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")
    parser.set_defaults(progress=None)
    return parser


def command(args: argparse.Namespace) -> None:
    model, variables, _ = load_model(args.workdir)
    cli.apply_run_defaults(args)
    images, _ = load_split(args.dataset, args.split, args.data_dir, download=args.download)
    main = is_main_process()  # prints; every process computes
    progress = (sys.stderr.isatty() if args.progress is None else args.progress) and main
    result = evaluate_model(model, variables, images, seed=args.seed,
                            iwae_samples=args.iwae_samples, batch_size=args.batch_size,
                            chunk_size=args.iwae_chunk,
                            binarize_mode=cli.chosen_binarize_mode(args), progress=progress,
                            parallel=DataParallel.create(args.devices))
    result.update(workdir=os.path.abspath(args.workdir), dataset=args.dataset, split=args.split)
    if main:
        print(json.dumps(result, allow_nan=False) if args.json else format_summary(result))


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
