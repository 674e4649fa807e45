"""Evaluating a trained VAE in nats: negative ELBO, importance-weighted NLL bound, latent use.

`python -m vae_jax.evaluate --workdir RUN [--iwae-samples 5000] [--binarize dynamic] [--json]`

Everything runs in eval mode (BatchNorm running averages), per image, in nats:

* negative ELBO: binary cross-entropy of the decoded single sample z ~ q(z|x), summed over
  pixels, plus the closed-form KL(q(z|x) || N(0, I)); the same quantity as `test_loss` in
  metrics.jsonl. Mean and standard error over the images.
* IWAE bound (Burda et al. 2015): log p(x) >= E[log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x)],
  z_k ~ q(z|x). Its negative, `nll_iwae`, is an upper bound on -log p(x) that tightens as K
  grows (K = 1 is the ELBO; K = 5000 is the literature's NLL estimate).
* KL per latent dimension (mean over the images) and active units: a dimension is active
  when the variance over the images of E_q[z|x] (the encoder's mean) exceeds 0.01.

The likelihood is Bernoulli with the decoder's logits, log p(x|z) = -BCE(x, sigmoid(logits))
(`losses.reconstruction_loss`). With the course's grayscale targets this "log-likelihood"
includes each pixel's own entropy and is not the log-probability of anything. With
`--binarize dynamic` (the default for a run trained with it) the images are Bernoulli(pixel)
draws, made once from their own key; the encoder sees them and they are the targets. The
numbers are then log-likelihoods of binary images, comparable with the literature's
dynamically binarized MNIST.

The math is pure functions of arrays with the decoder and the likelihood injectable
(`iwae_log_likelihood`, `importance_log_weights`, `iwae_bound`, `active_units`, ...), so it
can be checked on models whose log p(x) is known; the command line is `main(argv)`.
"""

from __future__ import annotations

import argparse
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

from vae_jax import checkpoints, losses
from vae_jax.binarize import binarize
from vae_jax.models import IMAGE_SIZE, VAE

ACTIVE_UNIT_THRESHOLD = 0.01
BINARIZE_MODES = ("none", "dynamic")
DEFAULT_IWAE_SAMPLES = 5000
DEFAULT_BATCH_SIZE = 100
DECODES_PER_CALL = 2000  # default IWAE chunk: about this many decoder images per step

LogLikelihoodFn = Callable[[jax.Array, jax.Array], jax.Array]
DecodeFn = Callable[[jax.Array], jax.Array]


# ---------------------------------------------------------------------------------------------
# Pure math.


def bernoulli_log_likelihood(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(x|z) of targets in [0, 1] under Bernoulli(sigmoid(logits)), summed: (B, ...) -> (B,).

    Exactly minus `losses.reconstruction_loss`, the course's summed binary cross-entropy.
    """
    return -losses.reconstruction_loss(logits, targets)


def gaussian_log_density(z: jax.Array, mean: jax.Array, stddev: jax.Array) -> jax.Array:
    """log N(z; mean, diag(stddev^2)) summed over the last axis."""
    standardized = (z - mean) / stddev
    per_dim = -0.5 * jnp.square(standardized) - jnp.log(stddev) - 0.5 * math.log(2 * math.pi)
    return per_dim.sum(axis=-1)


def kl_per_dimension(mean: jax.Array, stddev: jax.Array) -> jax.Array:
    """Closed-form KL(N(mean, stddev^2) || N(0, 1)) for each latent dimension: (B, z) -> (B, z).

    Summed over the last axis it is `losses.kl_divergence`.
    """
    return 0.5 * (jnp.square(mean) + jnp.square(stddev)) - jnp.log(stddev) - 0.5


def iwae_bound(log_weights: jax.Array, axis: int = 0) -> jax.Array:
    """log (1/K) sum_k exp(log_weights_k) along `axis` (K = its length): the IWAE bound on
    log p(x) from K importance log-weights log p(x, z_k) - log q(z_k|x)."""
    num_samples = log_weights.shape[axis]
    return jax.nn.logsumexp(log_weights, axis=axis) - math.log(num_samples)


def latent_activity(means: np.ndarray) -> np.ndarray:
    """Burda et al.'s activity of each latent dimension: the variance over the data of the
    posterior mean E_q[z|x]. (N, z) -> (z,)."""
    return np.var(np.asarray(means, np.float64), axis=0)


def active_units(means: np.ndarray, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """How many latent dimensions have activity (variance over the data of E_q[z|x]) above
    `threshold` (Burda et al. use 0.01)."""
    return int(np.sum(latent_activity(means) > threshold))


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """The mean of per-image values and its standard error (sample std / sqrt(N))."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))


def sample_latents(key: jax.Array, mean: jax.Array, stddev: jax.Array,
                   indices: jax.Array) -> jax.Array:
    """z_k = mean + stddev * eps_k for each sample index k in `indices`: (len, B, z).

    eps_k comes from `fold_in(key, k)`, so sample k is the same however the K samples are
    split into chunks.
    """
    eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(key, k), mean.shape,
                                               mean.dtype))(indices)
    return mean[None] + stddev[None] * eps


def _log_weights_for(z: jax.Array, images: jax.Array, mean: jax.Array, stddev: jax.Array,
                     decode_fn: DecodeFn, log_likelihood_fn: LogLikelihoodFn) -> jax.Array:
    """log p(x|z) + log p(z) - log q(z|x) for latents z (S, B, z_dim): (S, B)."""
    num, batch = z.shape[:2]
    outputs = decode_fn(z.reshape(num * batch, z.shape[-1]))
    targets = jnp.broadcast_to(images[None], (num,) + images.shape)
    log_px = log_likelihood_fn(outputs, targets.reshape((num * batch,) + images.shape[1:]))
    log_pz = gaussian_log_density(z, 0.0, 1.0)
    log_qz = gaussian_log_density(z, mean[None], stddev[None])
    return log_px.reshape(num, batch) + log_pz - log_qz


def importance_log_weights(key: jax.Array, images: jax.Array, mean: jax.Array,
                           stddev: jax.Array, decode_fn: DecodeFn, num_samples: int,
                           log_likelihood_fn: LogLikelihoodFn = bernoulli_log_likelihood,
                           ) -> jax.Array:
    """All K log-weights at once, (K, B): unchunked (K x B decodes in memory); for small K
    and tests. Sample k is the same as in `iwae_log_likelihood` with the same key."""
    z = sample_latents(key, mean, stddev, jnp.arange(num_samples))
    return _log_weights_for(z, images, mean, stddev, decode_fn, log_likelihood_fn)


def iwae_log_likelihood(key: jax.Array, images: jax.Array, mean: jax.Array, stddev: jax.Array,
                        decode_fn: DecodeFn, num_samples: int, chunk_size: int | None = None,
                        log_likelihood_fn: LogLikelihoodFn = bernoulli_log_likelihood,
                        ) -> jax.Array:
    """The IWAE estimate of log p(x) per image with K = `num_samples` samples: (B,).

    images (B, ...), mean and stddev (B, z) of q(z|x) (the encoder runs once, outside);
    `decode_fn` maps (N, z) latents to the likelihood's parameters (logits), and
    `log_likelihood_fn(outputs, targets)` gives log p(x|z) per row. The samples go through
    the decoder `chunk_size` at a time (chunk_size x B images per call) inside a `lax.scan`
    that keeps a running logsumexp, so memory does not grow with K. A last partial chunk
    is masked out. Jit-compatible with `decode_fn`, `log_likelihood_fn`, `num_samples` and
    `chunk_size` static.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    chunk_size = min(num_samples, chunk_size or num_samples)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    num_chunks = -(-num_samples // chunk_size)

    def body(running, chunk):
        indices = chunk * chunk_size + jnp.arange(chunk_size)
        z = sample_latents(key, mean, stddev, indices)
        log_weights = _log_weights_for(z, images, mean, stddev, decode_fn, log_likelihood_fn)
        log_weights = jnp.where((indices < num_samples)[:, None], log_weights, -jnp.inf)
        return jnp.logaddexp(running, jax.nn.logsumexp(log_weights, axis=0)), None

    initial = jnp.full(images.shape[:1], -jnp.inf, jnp.float32)
    total, _ = jax.lax.scan(body, initial, jnp.arange(num_chunks))
    return total - math.log(num_samples)


def neg_elbo_terms(key: jax.Array, images: jax.Array, mean: jax.Array, stddev: jax.Array,
                   decode_fn: DecodeFn,
                   log_likelihood_fn: LogLikelihoodFn = bernoulli_log_likelihood,
                   ) -> dict[str, jax.Array]:
    """Single-sample negative ELBO per image, as in training's evaluation: the reconstruction
    term -log p(x|z) at one z ~ q(z|x) plus the closed-form KL. Values (B,)."""
    z = sample_latents(key, mean, stddev, jnp.zeros((1,), jnp.int32))[0]
    reconstruction = -log_likelihood_fn(decode_fn(z), images)
    kl = kl_per_dimension(mean, stddev).sum(axis=-1)
    return {"neg_elbo": reconstruction + kl, "reconstruction": reconstruction, "kl": kl}


# ---------------------------------------------------------------------------------------------
# A saved model.


class EvaluationError(ValueError):
    """The run directory, its variables, or an option cannot be used."""


def load_model(workdir: str) -> tuple[VAE, dict, dict]:
    """(model, variables, config) of the run or saved variables in `workdir`.

    Raises EvaluationError (one line) when the directory or its variables are missing,
    unreadable, or do not fit a VAE with the saved configuration.
    """
    if not os.path.isdir(workdir):
        raise EvaluationError(f"--workdir {workdir} is not a directory")
    try:
        variables = checkpoints.load_variables(workdir)
    except checkpoints.CheckpointError as error:
        raise EvaluationError(str(error).splitlines()[0]) from None
    config = dict(checkpoints.load_config(workdir))
    if "z_dim" not in config:  # e.g. variables saved without config.json: read it off the kernel
        try:
            config["z_dim"] = int(variables["params"]["decoder"]["deconv1"]["kernel"].shape[2])
        except (KeyError, IndexError, AttributeError):
            raise EvaluationError(f"the variables in {workdir} are not the course VAE's "
                                  f"and there is no config.json") from None
    config.setdefault("im_chan", 1)
    model = VAE(z_dim=int(config["z_dim"]), im_chan=int(config["im_chan"]))
    expected = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE,
                                                         model.im_chan)),
                           jax.random.key(0), train=False))
    shapes = lambda tree: jax.tree.map(lambda x: tuple(np.shape(x)), tree)  # noqa: E731
    if shapes(expected) != shapes(variables):
        raise EvaluationError(f"the variables in {workdir} do not fit a VAE with z_dim="
                              f"{model.z_dim}, im_chan={model.im_chan} (config.json)")
    return model, variables, config


def training_binarize(workdir: str) -> str | None:
    """The `binarize` setting the run in `workdir` was trained with, when its checkpoints
    record one (None otherwise, e.g. for variables saved by `save_variables`)."""
    if not os.path.isdir(os.path.join(workdir, checkpoints.CHECKPOINTS_DIR)):
        return None
    run = checkpoints.RunCheckpoints(workdir)
    try:
        config = run.read_config()
    except Exception:  # an unreadable config only loses the default
        return None
    finally:
        run.close()
    mode = (config or {}).get("binarize")
    return mode if mode in BINARIZE_MODES else None


def decoder_fn(model: VAE, variables: dict) -> DecodeFn:
    """z (N, z_dim) -> logits (N, 28, 28, im_chan), eval mode."""
    return lambda z: model.apply(variables, z, train=False, method=VAE.decode)


@functools.lru_cache(maxsize=None)
def jitted_decoder(model: VAE) -> Callable[[dict, jax.Array], jax.Array]:
    """`(variables, z) -> logits`, jitted once per model (eval mode)."""
    return jax.jit(lambda variables, z: model.apply(variables, z, train=False,
                                                    method=VAE.decode))


@functools.lru_cache(maxsize=None)
def _encode_elbo_fn(model: VAE):
    @jax.jit
    def run(variables, images, key):
        mean, stddev = model.apply(variables, images, train=False, method=VAE.encode)
        terms = neg_elbo_terms(key, images, mean, stddev, decoder_fn(model, variables))
        return mean, stddev, terms
    return run


@functools.lru_cache(maxsize=None)
def _iwae_fn(model: VAE, num_samples: int, chunk_size: int):
    @jax.jit
    def run(variables, images, mean, stddev, key):
        return iwae_log_likelihood(key, images, mean, stddev, decoder_fn(model, variables),
                                   num_samples, chunk_size)
    return run


@functools.lru_cache(maxsize=None)
def _encode_fn(model: VAE):
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
    run = _encode_fn(model)
    means, stddevs = [], []
    for _, count, (batch,) in _padded_batches((images,), min(batch_size, len(images))):
        mean, stddev = jax.device_get(run(variables, batch))
        means.append(mean[:count])
        stddevs.append(stddev[:count])
    return np.concatenate(means), np.concatenate(stddevs)


def default_chunk_size(num_samples: int, batch_size: int) -> int:
    """Samples per decoder call: about DECODES_PER_CALL decoded images, at most K."""
    return max(1, min(num_samples, DECODES_PER_CALL // batch_size))


def evaluate_model(model: VAE, variables: dict, images: np.ndarray, *, seed: int = 0,
                   iwae_samples: int = DEFAULT_IWAE_SAMPLES, batch_size: int = DEFAULT_BATCH_SIZE,
                   chunk_size: int | None = None, binarize_mode: str = "none",
                   progress: bool = False) -> dict:
    """All the numbers for `images` (N, 28, 28, C) in [0, 1]; see the module docstring.

    The keys for binarization, the ELBO's sample and the IWAE samples come from
    `jax.random.key(seed)`; the ELBO and IWAE keys are folded with the batch index.
    """
    if binarize_mode not in BINARIZE_MODES:
        raise EvaluationError(f"binarize must be one of {BINARIZE_MODES}, got {binarize_mode!r}")
    if iwae_samples < 1:
        raise EvaluationError(f"--iwae-samples must be at least 1, got {iwae_samples}")
    start = time.perf_counter()
    num_images = len(images)
    batch_size = min(batch_size, num_images)
    chunk_size = min(chunk_size or default_chunk_size(iwae_samples, batch_size), iwae_samples)
    binarize_key, elbo_key, iwae_key = jax.random.split(jax.random.key(seed), 3)
    targets = np.asarray(images, np.float32)
    if binarize_mode == "dynamic":
        targets = np.asarray(binarize(binarize_key, targets))

    # Compiled ahead of time (every batch is padded to one shape), so that the timings of
    # the passes below are run time only.
    image_spec = jax.ShapeDtypeStruct((batch_size,) + targets.shape[1:], jnp.float32)
    latent_spec = jax.ShapeDtypeStruct((batch_size, model.z_dim), jnp.float32)
    encode_elbo = _encode_elbo_fn(model).lower(variables, image_spec, elbo_key).compile()
    iwae = _iwae_fn(model, iwae_samples, chunk_size).lower(
        variables, image_spec, latent_spec, latent_spec, iwae_key).compile()
    compile_seconds = time.perf_counter() - start

    # Pass 1: encode once, single-sample negative ELBO.
    elbo_start = time.perf_counter()
    means, stddevs, terms = [], [], {"neg_elbo": [], "reconstruction": [], "kl": []}
    for index, count, (batch,) in _padded_batches((targets,), batch_size):
        mean, stddev, batch_terms = jax.device_get(
            encode_elbo(variables, batch, jax.random.fold_in(elbo_key, index)))
        means.append(mean[:count])
        stddevs.append(stddev[:count])
        for name, values in batch_terms.items():
            terms[name].append(values[:count])
    means, stddevs = np.concatenate(means), np.concatenate(stddevs)
    terms = {name: np.concatenate(values) for name, values in terms.items()}
    elbo_seconds = time.perf_counter() - elbo_start

    # Pass 2: the IWAE bound, reusing the encoder's mean and stddev (padding rows get
    # stddev 1 so that they stay finite; they are dropped).
    iwae_start = time.perf_counter()
    log_px = []
    padded_stddevs = np.concatenate([stddevs, np.ones((batch_size, stddevs.shape[1]),
                                                      stddevs.dtype)])
    batches = _padded_batches((targets, means, stddevs), batch_size)
    from tqdm.auto import tqdm
    with tqdm(total=num_images, disable=not progress, unit="img", leave=False,
              desc=f"IWAE K={iwae_samples}", file=sys.stderr) as bar:
        for index, count, (batch, mean, stddev) in batches:
            if count < batch_size:
                stddev = padded_stddevs[index * batch_size:(index + 1) * batch_size]
            values = jax.device_get(iwae(variables, batch, mean, stddev,
                                         jax.random.fold_in(iwae_key, index)))
            log_px.append(values[:count])
            bar.update(count)
    log_px = np.concatenate(log_px)
    iwae_seconds = time.perf_counter() - iwae_start

    neg_elbo, neg_elbo_stderr = mean_and_stderr(terms["neg_elbo"])
    nll, nll_stderr = mean_and_stderr(-log_px)
    activity = latent_activity(means)
    kl_dims = kl_per_dimension(means.astype(np.float64), stddevs.astype(np.float64)).mean(axis=0)
    if not (np.all(np.isfinite(terms["neg_elbo"])) and np.all(np.isfinite(log_px))):
        raise EvaluationError("the model gives non-finite values on these images")
    return {
        "neg_elbo": neg_elbo, "neg_elbo_stderr": neg_elbo_stderr,
        "reconstruction": float(terms["reconstruction"].mean()),
        "kl": float(terms["kl"].mean()),
        "nll_iwae": nll, "nll_iwae_stderr": nll_stderr, "iwae_samples": iwae_samples,
        "iwae_chunk": chunk_size,
        "active_units": int(np.sum(activity > ACTIVE_UNIT_THRESHOLD)),
        "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
        "z_dim": int(means.shape[1]),
        "kl_per_dim": [float(value) for value in kl_dims],
        "latent_activity": [float(value) for value in activity],
        "num_images": num_images, "binarize": binarize_mode, "seed": seed,
        "batch_size": batch_size, "backend": jax.default_backend(),
        "seconds_compile": compile_seconds, "seconds_elbo": elbo_seconds,
        "seconds_iwae": iwae_seconds,
        "iwae_decodes_per_sec": num_images * iwae_samples / iwae_seconds,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------
# Command line (shared by vae_jax.sample and vae_jax.plots).

from vae_jax.cli import OneLineParser, positive_int  # noqa: E402  (re-exported for them)


def add_common_arguments(parser: argparse.ArgumentParser, data: bool = True) -> None:
    from vae_jax.platforms import PLATFORMS
    parser.add_argument("--workdir", required=True,
                        help="a training run (or a directory made by save_variables)")
    parser.add_argument("--platform", choices=PLATFORMS, default="auto",
                        help="JAX backend (default: auto)")
    if data:
        parser.add_argument("--dataset", default="mnist",
                            help="tfds dataset of 28x28 grayscale images (default: mnist)")
        parser.add_argument("--data-dir", default=None,
                            help="tfds data directory (default: $TFDS_DATA_DIR or tfds' own)")
        parser.add_argument("--split", default="test",
                            help="tfds split, e.g. 'test' or 'test[:500]' (default: test)")
        parser.add_argument("--no-download", dest="download", action="store_false",
                            help="fail at once if the dataset is not in the data directory")


def add_binarize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--binarize", choices=BINARIZE_MODES, default=None,
                        help="none: grayscale images, as the course trains; dynamic: one "
                             "Bernoulli(pixel) draw per image, comparable with the literature "
                             "(default: what the run was trained with, else none)")
    parser.add_argument("--seed", type=int, default=0)


def chosen_binarize_mode(args: argparse.Namespace) -> str:
    """--binarize, else what the run in --workdir was trained with, else "none"."""
    return args.binarize or training_binarize(args.workdir) or "none"


def select_platform(prog: str, platform: str) -> bool:
    from vae_jax import platforms
    try:
        platforms.select_platform(platform)
    except platforms.PlatformError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return False
    return True


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m vae_jax.evaluate",
                           description="Evaluate a trained VAE in nats on a tfds split.")
    add_common_arguments(parser)
    parser.add_argument("--iwae-samples", type=positive_int, default=DEFAULT_IWAE_SAMPLES,
                        metavar="K", help="importance samples per image for the NLL bound "
                                          f"(default {DEFAULT_IWAE_SAMPLES})")
    parser.add_argument("--iwae-chunk", type=positive_int, default=None, metavar="S",
                        help="IWAE samples per decoder call (default: about "
                             f"{DECODES_PER_CALL} decoded images per call)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        help=f"images per batch (default {DEFAULT_BATCH_SIZE})")
    add_binarize_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")
    parser.set_defaults(progress=None)
    return parser.parse_args(argv)


def format_bounds(result: dict) -> list[str]:
    """The negative ELBO and IWAE lines of a summary (also used by pool_evaluations)."""
    elbo_label = "negative ELBO (1 sample)"
    iwae_label = f"NLL bound (IWAE, K={result['iwae_samples']})"
    width = max(len(elbo_label), len(iwae_label))
    return [
        f"  {elbo_label:<{width}} {result['neg_elbo']:8.2f} ± {result['neg_elbo_stderr']:.2f} "
        f"nats  (reconstruction {result['reconstruction']:.2f} + KL {result['kl']:.2f})",
        f"  {iwae_label:<{width}} {result['nll_iwae']:8.2f} ± {result['nll_iwae_stderr']:.2f} "
        "nats",
    ]


def format_summary(result: dict, args: argparse.Namespace) -> str:
    targets = ("dynamically binarized images (one Bernoulli(pixel) draw each): "
               "log-likelihoods of binary images, the literature's measure"
               if result["binarize"] == "dynamic" else
               "grayscale targets: the BCE includes the pixels' own entropy, so these are "
               "not log-likelihoods")
    kl_sorted = sorted(result["kl_per_dim"], reverse=True)
    lines = [
        f"{args.dataset} {args.split}: {result['num_images']} images, model z_dim="
        f"{result['z_dim']} from {args.workdir}",
        f"  {targets}",
        *format_bounds(result),
        f"  active units {result['active_units']} of {result['z_dim']} (variance of E[z|x] > "
        f"{result['active_unit_threshold']})",
        "  KL per dimension (nats), largest first: "
        + " ".join(f"{value:.2f}" for value in kl_sorted),
        f"  time {result['seconds']:.1f} s (compile {result['seconds_compile']:.1f} s, ELBO "
        f"{result['seconds_elbo']:.1f} s, IWAE {result['seconds_iwae']:.1f} s, "
        f"{result['iwae_decodes_per_sec']:.0f} decodes/s on {result['backend']})",
    ]
    return "\n".join(lines)


def load_images(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    from vae_jax.input_pipeline import load_split
    return load_split(args.dataset, args.split, args.data_dir, download=args.download)


def main(argv=None) -> int:
    args = parse_args(argv)
    prog = "python -m vae_jax.evaluate"
    if not select_platform(prog, args.platform):
        return 2
    from vae_jax.input_pipeline import DatasetError
    try:
        model, variables, _ = load_model(args.workdir)
        images, _ = load_images(args)
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        result = evaluate_model(model, variables, images, seed=args.seed,
                                iwae_samples=args.iwae_samples, batch_size=args.batch_size,
                                chunk_size=args.iwae_chunk,
                                binarize_mode=chosen_binarize_mode(args),
                                progress=progress)
    except (EvaluationError, DatasetError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    result.update(workdir=os.path.abspath(args.workdir), dataset=args.dataset, split=args.split)
    print(json.dumps(result) if args.json else format_summary(result, args))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
