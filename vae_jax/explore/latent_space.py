"""A trained VAE's latent space, as the explorer page uses it: pure functions and one
object that holds the model with its encoder and decoder compiled once per batch shape.

Everything here runs without a browser (tests/test_explore.py). Images are (28, 28, 1)
float32 in [0, 1]; latents are (z_dim,) vectors.
"""

import dataclasses
from typing import Callable

import jax
import numpy as np

from vae_jax.evaluation.elbo import encode as encode_images
from vae_jax.evaluation.sampling import sample_images
from vae_jax.model import losses, metrics
from vae_jax.model.vae import IMAGE_SIZE, VAE
from vae_jax.runtime.errors import InputError

WALK_STEPS = 10        # decoded images between (and including) a walk's two ends
SAMPLE_GRID = 64       # prior samples on the page: an 8x8 grid
SLIDER_RANGE = 4.0     # sliders span -4..4, four prior standard deviations
SLIDER_DECIMALS = 2    # and move in steps of 0.01


@dataclasses.dataclass(frozen=True)
class Posterior:
    """q(z|x) of one image, each (z_dim,): mean, standard deviation and the KL of each
    dimension from the prior N(0, 1), in nats."""

    mean: np.ndarray
    stddev: np.ndarray
    kl: np.ndarray


@dataclasses.dataclass(frozen=True)
class LatentUse:
    """How the model uses each latent dimension over reference images (the test split),
    each (z_dim,): the mean KL from the prior in nats and Burda et al.'s activity (the
    variance of the posterior mean); `order` lists the dimensions, most informative
    (highest mean KL) first."""

    mean_kl: np.ndarray
    activity: np.ndarray
    order: np.ndarray

    @property
    def measured(self) -> bool:
        """Whether reference images gave the numbers (False: `unordered_use`, all NaN)."""
        return bool(np.all(np.isfinite(self.mean_kl)))

    @property
    def active(self) -> np.ndarray:
        """(z_dim,) bool: activity above metrics.ACTIVE_UNIT_THRESHOLD."""
        return self.activity > metrics.ACTIVE_UNIT_THRESHOLD


def posterior_from(mean: np.ndarray, stddev: np.ndarray) -> Posterior:
    """The Posterior of one image's (z_dim,) mean and standard deviation."""
    mean, stddev = np.asarray(mean, np.float32), np.asarray(stddev, np.float32)
    return Posterior(mean, stddev, np.asarray(losses.kl_per_dimension(mean, stddev)))


def latent_use(means: np.ndarray, stddevs: np.ndarray) -> LatentUse:
    """The LatentUse of reference images' posteriors, means and stddevs (N, z_dim)."""
    mean_kl = np.asarray(losses.kl_per_dimension(means, stddevs), np.float64).mean(axis=0)
    return LatentUse(mean_kl, metrics.latent_activity(means),
                     np.argsort(-mean_kl, kind="stable"))


def unordered_use(z_dim: int) -> LatentUse:
    """A LatentUse when there are no reference images: nothing known, index order."""
    nothing = np.full(z_dim, np.nan)
    return LatentUse(nothing, nothing, np.arange(z_dim))


def interpolate(start: np.ndarray, end: np.ndarray, steps: int = WALK_STEPS) -> np.ndarray:
    """`steps` latents on the line from `start` to `end` (z_dim,), both ends included:
    (steps, z_dim)."""
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return (1 - weights) * np.asarray(start, np.float32) + weights * np.asarray(end, np.float32)


def slider_values(z: np.ndarray, order: np.ndarray) -> list[float]:
    """The sliders' positions for latent `z` (z_dim,): z in `order`, clipped to the
    sliders' range and rounded to their step."""
    return [round(float(np.clip(z[dimension], -SLIDER_RANGE, SLIDER_RANGE)), SLIDER_DECIMALS)
            for dimension in order]


def latent_from_sliders(values, order: np.ndarray) -> np.ndarray:
    """The latent (z_dim,) that sliders in `order` show: the inverse of slider_values."""
    z = np.zeros(len(order), np.float32)
    z[np.asarray(order)] = np.asarray(values, np.float32)
    return z


def check_image(image: np.ndarray) -> np.ndarray:
    """`image` as a (28, 28, 1) float32 array in [0, 1]; InputError (one line) otherwise."""
    image = np.asarray(image, np.float32)
    if image.shape == (IMAGE_SIZE, IMAGE_SIZE):
        image = image[..., None]
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE, 1):
        raise InputError(f"an image must be 28x28 grayscale, got shape {image.shape}")
    if not np.all(np.isfinite(image)) or image.min() < 0 or image.max() > 1:
        raise InputError("an image's pixels must be in [0, 1]")
    return image


class LatentSpace:
    """A trained model's encoder and decoder for one image or latent at a time.

    `encode(image)` -> Posterior; `decode(z)` -> images in [0, 1] for latents (n, z_dim);
    `walk(a, b)`, `samples(seed)`. Each function is jit-compiled once per input shape (one
    image, one latent, a walk, a grid), so moving a slider runs compiled code only.
    `reference_images` (N, 28, 28, 1), when given, rank the latents (`use`).
    """

    def __init__(self, model: VAE, variables: dict, reference_images: np.ndarray | None = None,
                 *, trace_guard: Callable[[Callable], Callable] = lambda function: function):
        self.model, self.variables = model, variables
        encode = lambda variables, images: model.apply(  # noqa: E731
            variables, images, train=False, method=VAE.encode)
        decode = lambda variables, z: jax.nn.sigmoid(model.apply(  # noqa: E731
            variables, z, train=False, method=VAE.decode))
        self._encode = jax.jit(trace_guard(encode))
        self._decode = jax.jit(trace_guard(decode))
        self.reference_images = reference_images
        if reference_images is None or len(reference_images) == 0:
            self.use = unordered_use(model.z_dim)
        else:
            means, stddevs = self.encode_many(reference_images)
            self.use = latent_use(means, stddevs)

    @property
    def z_dim(self) -> int:
        return self.model.z_dim

    def encode_many(self, images: np.ndarray, batch_size: int = 500
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means and stddevs (N, z_dim) of images (N, 28, 28, 1)."""
        return encode_images(self.model, self.variables, images, batch_size)

    def encode(self, image: np.ndarray) -> Posterior:
        """q(z|x) of one image (28, 28, 1) in [0, 1]."""
        mean, stddev = jax.device_get(self._encode(self.variables, check_image(image)[None]))
        return posterior_from(mean[0], stddev[0])

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Latents (n, z_dim) -> images (n, 28, 28, 1) in [0, 1]: sigmoid of the logits."""
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or z.shape[1] != self.z_dim or not np.all(np.isfinite(z)):
            raise InputError(f"latents must be finite with shape (n, {self.z_dim}), "
                             f"got {z.shape}")
        return np.asarray(self._decode(self.variables, z))

    def reconstruct(self, posterior: Posterior) -> np.ndarray:
        """The image (28, 28, 1) decoded from the posterior mean."""
        return self.decode(posterior.mean[None])[0]

    def walk(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """The images (WALK_STEPS, 28, 28, 1) decoded along the line from the posterior
        mean of image `start` to that of `end`."""
        return self.decode(interpolate(self.encode(start).mean, self.encode(end).mean))

    def warm_up(self) -> None:
        """Compiles every shape the page uses (one image, one latent, a walk, the sample
        grid), so that its first views answer at once."""
        blank = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
        posterior = self.encode(blank)
        self.reconstruct(posterior)
        self.walk(blank, blank)
        self.samples(0)

    def samples(self, seed: int) -> np.ndarray:
        """SAMPLE_GRID prior samples (n, 28, 28, 1) for `seed`: those `vae-jax-sample --seed
        SEED --num 64` draws."""
        return sample_images(self.model, self.variables, jax.random.key(seed), SAMPLE_GRID)
