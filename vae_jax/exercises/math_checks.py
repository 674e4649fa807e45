"""The checks of the exercises that are pure math: split, reparameterize, kl,
reconstruction, loss, sample and iwae.

Each runs the learner's function on fixed cases (known answers) and pseudo-random ones
(fixed keys, so a check says the same every time), compares it with the library's own
implementation (`vae_jax.model`), and when they differ, tries the mistakes learners make
to name the one it is. It raises `Mistake` with the hint, or returns when the function
passed.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.exercises.answers import Mistake, array, call, call_jitted, close, pair
from vae_jax.exercises.registry import exercise
from vae_jax.model import iwae as iwae_math
from vae_jax.model import losses

PIXELS = 28 * 28


def _normal(seed: int, shape: tuple, scale: float = 1.0, shift: float = 0.0) -> jax.Array:
    return shift + scale * jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _jit_agrees(name: str, fn: Callable, args: tuple, eager: np.ndarray, what: str) -> None:
    jitted = call_jitted(exercise(name), fn, *args)
    for got, want in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
        if not close(got, want, rtol=1e-4, atol=1e-4):
            raise Mistake(f"{what} differs under jax.jit: the function must depend only on "
                          f"its arguments (no global state), so that compiling it changes "
                          f"nothing")


# split ------------------------------------------------------------------------------------

def check_split(fn: Callable) -> None:
    ex = exercise("split")
    # A fixed case: z_dim 2, the second half log(2) and 0, so stddev is 2 and 1.
    fixed = jnp.array([[0.5, -1.0, math.log(2.0), 0.0]], jnp.float32)
    cases = [fixed, _normal(1, (8, 64), 1.5), _normal(2, (3, 10)), _normal(3, (1, 2))]
    for encoding in cases:
        batch, z_dim = encoding.shape[0], encoding.shape[1] // 2
        mean, stddev = pair(ex, call(ex, fn, encoding), "mean, stddev")
        shape = (batch, z_dim)

        def explain(got, what):
            if got == (batch, 2 * z_dim):
                return (f"{what} has all {2 * z_dim} numbers of each row: each half is "
                        f"z_dim = {z_dim} long, encoding[:, :z_dim] and encoding[:, z_dim:]")
            if len(got) == 2 and got[0] != batch:
                return (f"{what} has shape {got} where {shape} was expected: split each row "
                        f"(the last axis), not the batch (axis 0)")
            return None

        mean = array(mean, "mean", shape, explain_shape=lambda got: explain(got, "mean"))
        stddev = array(stddev, "stddev", shape, explain_shape=lambda got: explain(got, "stddev"),
                       not_finite="stddev holds NaN or inf: exp of the second half is "
                                  "finite for any encoder output")
        first, second = np.asarray(encoding[:, :z_dim]), np.asarray(encoding[:, z_dim:])
        if close(mean, first) and close(stddev, np.exp(second)):
            continue
        if close(mean, second):
            raise Mistake("the halves are swapped: the course's encoder was trained with the "
                          "mean first, encoding[:, :z_dim], and log(stddev) second; nothing "
                          "in the network marks them, so the code that reads them must match "
                          "the code that trained them")
        if not close(mean, first):
            raise Mistake("mean should be the first z_dim numbers of each row, "
                          "encoding[:, :z_dim], as they come out of the encoder")
        if close(stddev, np.exp(second / 2)):
            raise Mistake("stddev = exp(x / 2) reads the second half as log(variance), but this "
                          "encoder emits log(stddev): the course's code takes exp of it as the "
                          "standard deviation (its comment saying 'log of the variance' is "
                          "wrong), so stddev = jnp.exp(x)")
        if close(stddev, second):
            raise Mistake("stddev is the raw second half, which is negative as often as not; "
                          "the encoder emits log(stddev), so take jnp.exp of it, which is "
                          "positive for any output")
        if close(stddev, np.exp(2 * second)):
            raise Mistake("stddev = exp(2x) is the variance; the second half is log(stddev), "
                          "so stddev = jnp.exp(x)")
        raise Mistake("stddev should be jnp.exp of the second half, encoding[:, z_dim:]: the "
                      "encoder emits log(stddev), and exp makes any output a positive "
                      "standard deviation")
    _jit_agrees("split", fn, (cases[1],), (np.asarray(cases[1][:, :32]),
                                           np.exp(np.asarray(cases[1][:, 32:]))), "split")


def _check_scale(spread: float, stddev: float) -> None:
    """Names the mistake when z - mean has standard deviation `spread` for a constant
    `stddev` (the noise being standard normal): a variance, a log-variance, exp again."""
    readings = ((stddev ** 2, "z - mean is eps * stddev², the variance: z = mean + stddev * "
                              "eps, since the standard deviation scales standard noise"),
                (math.exp(stddev / 2), "stddev is read as a log-variance (exp(stddev / 2)): it "
                                       "is the standard deviation itself, so z = mean + "
                                       "stddev * eps"),
                (math.exp(stddev), "stddev is exponentiated again: split already turned "
                                   "log(stddev) into stddev, so z = mean + stddev * eps"),
                (math.sqrt(stddev), "stddev is read as a variance (its square root is taken): "
                                    "it is the standard deviation itself, so z = mean + "
                                    "stddev * eps"),
                (1.0, "stddev is ignored: z = mean + stddev * eps, otherwise the encoder's "
                      "second half has no effect on the sample"))
    if abs(spread - stddev) < 0.05 * stddev:
        return
    for value, hint in readings:
        if abs(spread - value) < 0.05 * value:
            raise Mistake(hint)


# reparameterize ---------------------------------------------------------------------------

def check_reparameterize(fn: Callable) -> None:
    ex = exercise("reparameterize")
    batch, z_dim = 2048, 8
    key, other_key = jax.random.key(11), jax.random.key(12)
    zeros, ones = jnp.zeros((batch, z_dim)), jnp.ones((batch, z_dim))

    def draw(key, mean, stddev, what="z"):
        return array(call(ex, fn, key, mean, stddev), what, mean.shape)

    eps = draw(key, zeros, ones)  # with mean 0 and stddev 1, z is the noise itself
    if not close(draw(key, zeros, ones), eps):
        raise Mistake("the same key gave a different z: in JAX randomness comes only from "
                      "the key, never from hidden global state such as np.random, so draw "
                      "eps with jax.random.normal(key, mean.shape)")
    if close(draw(other_key, zeros, ones), eps):
        raise Mistake("two different keys gave the same z, so the key is ignored: draw eps "
                      "from the key you are given, or every training step reuses the same "
                      "noise")
    if np.allclose(eps, eps[:1]):
        raise Mistake("every image got the same noise: draw eps with the shape of mean, "
                      "(B, z_dim), so each image gets its own sample")
    columns = [eps[:, index] for index in range(z_dim)]
    if (len(np.unique(eps.round(6), axis=0)) < batch
            or any(np.allclose(columns[i], columns[j]) for i in range(z_dim)
                   for j in range(i + 1, z_dim))):
        raise Mistake("the same noise appears twice: a key gives the same numbers every time "
                      "it is used, so draw all of eps in one call with the shape of mean (or "
                      "split the key into fresh ones first)")
    average, spread = float(eps.mean()), float(eps.std())
    if abs(average - 0.5) < 0.05 and abs(spread - math.sqrt(1 / 12)) < 0.05:
        raise Mistake("the noise looks uniform on [0, 1): the trick needs eps ~ N(0, I), so "
                      "that z = mean + stddev * eps is distributed as N(mean, stddev²); use "
                      "jax.random.normal")
    # How z - mean scales with stddev, at stddev 1 (here) and 2 (below), names the mistake.
    _check_scale(spread, 1.0)
    if abs(average) > 0.05 or abs(spread - 1) > 0.05:
        raise Mistake(f"with mean 0 and stddev 1, z should be standard normal, but it has "
                      f"mean {average:.2f} and standard deviation {spread:.2f}: draw eps with "
                      f"jax.random.normal, so that z ~ N(mean, stddev²)")
    scaled = draw(key, jnp.full((batch, z_dim), 3.0), jnp.full((batch, z_dim), 2.0))
    if abs(float(np.mean(scaled)) - 3.0) > 0.5 and close(scaled, 2.0 * eps, rtol=1e-4,
                                                         atol=1e-4):
        raise Mistake("z is not centred on mean: z = mean + stddev * eps, so that the first "
                      "half of the encoding says where the image sits in latent space")
    _check_scale(float(np.std(scaled - 3.0)), 2.0)
    mean, stddev = _normal(13, (4, 5)), jnp.exp(_normal(14, (4, 5), 0.5))
    z = draw(key, mean, stddev)
    noise = array(call(ex, fn, key, jnp.zeros((4, 5)), jnp.ones((4, 5))), "z", (4, 5))
    if not close(z, np.asarray(mean) + np.asarray(stddev) * noise, rtol=1e-4, atol=1e-4):
        raise Mistake("z should be mean + stddev * eps, element by element, with eps ~ N(0, I) "
                      "drawn from the key")
    # The point of the trick: z is differentiable in mean (dz/dmean = 1) and stddev (= eps).
    try:
        grad_mean, grad_stddev = jax.grad(lambda m, s: jnp.sum(fn(key, m, s)),
                                          argnums=(0, 1))(mean, stddev)
    except Exception as error:  # noqa: BLE001
        raise Mistake(f"jax.grad cannot differentiate z ({type(error).__name__}): compute it "
                      f"with jnp operations, so the loss's gradient can reach the encoder "
                      f"through the sample") from None
    if not close(grad_mean, np.ones((4, 5)), rtol=1e-4, atol=1e-4):
        raise Mistake("the gradient of z with respect to mean is not 1: no stop_gradient or "
                      "NumPy inside, the reparameterization trick is what lets the loss's "
                      "gradient reach the encoder through the sample")
    if not close(grad_stddev, noise, rtol=1e-4, atol=1e-4):
        raise Mistake("the gradient of z with respect to stddev is not eps: z must be "
                      "mean + stddev * eps with eps drawn separately, so that the sample is a "
                      "differentiable function of stddev")
    _jit_agrees("reparameterize", fn, (key, mean, stddev), z, "z")


# kl ---------------------------------------------------------------------------------------

def check_kl(fn: Callable) -> None:
    ex = exercise("kl")
    cases = [(jnp.zeros((3, 4)), jnp.ones((3, 4))),              # q is the prior: KL 0
             (jnp.ones((2, 4)), jnp.ones((2, 4))),               # 0.5 per dimension
             (_normal(21, (6, 5)), jnp.exp(_normal(22, (6, 5), 0.5))),
             (_normal(23, (1, 32), 2.0), jnp.exp(_normal(24, (1, 32), 1.0)))]
    for mean, stddev in cases:
        batch, z_dim = mean.shape

        def explain(got):
            if got == ():
                return ("kl returns one number for the whole batch: the KL is per image, so "
                        "sum over the latent axis only, axis=-1")
            if got == (batch, z_dim):
                return ("kl returns the KL of each latent dimension, (B, z_dim): the "
                        "dimensions of q and of the prior are independent, so their KLs add "
                        "up; sum over axis=-1")
            if got == (z_dim,):
                return "kl sums over the batch (axis 0); sum over the latent axis, axis=-1"
            return None

        got = array(call(ex, fn, mean, stddev), "kl", (batch,), explain_shape=explain,
                    not_finite="kl is NaN or inf for ordinary inputs: log(stddev) is finite "
                               "for any positive stddev, and stddev is never 0 here")
        m, s = np.asarray(mean, np.float64), np.asarray(stddev, np.float64)
        want = np.asarray(losses.kl_divergence(mean, stddev))
        if close(got, want):
            continue
        if close(got, -want):
            raise Mistake("the sign is flipped: KL(q || p) is never negative (it is 0 only when "
                          "q equals the prior), so 0.5 * (mean² + stddev²) - log(stddev) - 0.5")
        if close(got, want / z_dim):
            raise Mistake("kl averages over the latent dimensions: the KLs of independent "
                          "dimensions add up, so sum them, as the course's loss does")
        if close(got, -0.5 * np.sum(1 + s - m ** 2 - np.exp(s), axis=-1)):
            raise Mistake("this is the KL written for a log-variance, but kl receives the "
                          "standard deviation itself (split already applied exp): per "
                          "dimension 0.5 * (mean² + stddev²) - log(stddev) - 0.5")
        if close(got, 0.5 * np.sum(m ** 2 + s - np.log(s) - 1, axis=-1)):
            raise Mistake("this reads stddev as the variance: with the standard deviation the "
                          "KL per dimension is 0.5 * (mean² + stddev²) - log(stddev) - 0.5")
        if not np.abs(m).any() and (np.asarray(stddev) == 1).all():
            raise Mistake(f"with mean 0 and stddev 1, q(z|x) is the prior itself and the KL "
                          f"must be 0, got {float(got[0]):.4g}: per dimension it is 0.5 * "
                          f"(mean² + stddev²) - log(stddev) - 0.5")
        raise Mistake("kl differs from the closed form: per dimension 0.5 * (mean² + stddev²) "
                      "- log(stddev) - 0.5, summed over the latent dimensions")
    mean, stddev = cases[2]
    _jit_agrees("kl", fn, (mean, stddev), np.asarray(losses.kl_divergence(mean, stddev)), "kl")


# reconstruction ---------------------------------------------------------------------------

STABLE_FORM = "softplus(logits) - images * logits (or optax.sigmoid_binary_cross_entropy)"


def _gray_images(seed: int, batch: int) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (batch, 28, 28, 1))


def check_reconstruction(fn: Callable) -> None:
    ex = exercise("reconstruction")
    images = _gray_images(31, 4)
    logits = _normal(32, (4, 28, 28, 1), 3.0)
    binary = (jax.random.uniform(jax.random.key(33), (3, 28, 28, 1)) > 0.5).astype(jnp.float32)
    cases = [(logits, images), (_normal(34, (1, 28, 28, 1), 2.0), _gray_images(35, 1))]

    def explain(got, batch):
        if got == ():
            return ("reconstruction returns one number for the whole batch: sum over each "
                    "image's pixels only, one value per image, (B,)")
        if len(got) == 4:
            return ("reconstruction returns a value per pixel: sum each image's 784 pixels "
                    "into one number per image, (B,)")
        return None

    for case_logits, case_images in cases:
        batch = case_logits.shape[0]
        got = array(call(ex, fn, case_logits, case_images), "reconstruction", (batch,),
                    explain_shape=lambda shape: explain(shape, batch),
                    not_finite=f"reconstruction is NaN or inf for ordinary logits: the decoder "
                               f"outputs logits, any real number, not probabilities, so "
                               f"compute from the logits: {STABLE_FORM}")
        want = np.asarray(losses.reconstruction_loss(case_logits, case_images))
        if close(got, want):
            continue
        probabilities = np.asarray(jax.nn.sigmoid(case_logits), np.float64).reshape(batch, -1)
        flat_images = np.asarray(case_images, np.float64).reshape(batch, -1)
        squared = ((probabilities - flat_images) ** 2).sum(-1)
        if close(got, -want):
            raise Mistake("the sign is flipped: the cross-entropy is minus the log-likelihood, "
                          "a positive number that falls as the reconstruction improves")
        if close(got, want / PIXELS):
            raise Mistake("reconstruction averages over the pixels: an image's log-likelihood "
                          "is the sum over its 784 pixels, and the mean would weigh the "
                          "reconstruction 784 times less than the KL")
        if close(got, squared) or close(got, squared / PIXELS):
            raise Mistake("this is the squared error, a Gaussian's log-likelihood; the course's "
                          "decoder models each pixel as a Bernoulli with probability "
                          "sigmoid(logits), whose negative log-likelihood is the binary "
                          f"cross-entropy: {STABLE_FORM}")
        raise Mistake("reconstruction differs from the binary cross-entropy summed over each "
                      f"image's pixels: compute it from the logits, {STABLE_FORM}")
    # Large logits: exact from the logits; through probabilities log(0) = -inf, or a clamp.
    # Logits of ±30 and ±200, right and wrong: float32 rounds sigmoid(30) to exactly 1.
    magnitude = jnp.where(jax.random.uniform(jax.random.key(36), binary.shape) > 0.5, 30.0,
                          200.0)
    extreme = magnitude * jnp.where(
        jax.random.uniform(jax.random.key(37), binary.shape) > 0.5, 1.0, -1.0)
    got = array(call(ex, fn, extreme, binary), "reconstruction", (3,),
                not_finite="reconstruction overflows for large logits: sigmoid(logits) rounds "
                           "to exactly 1 or 0 in float32 and its log is -inf, so compute from "
                           f"the logits, {STABLE_FORM}, which is exact everywhere")
    if not close(got, np.asarray(losses.reconstruction_loss(extreme, binary)), rtol=1e-4):
        raise Mistake("reconstruction is wrong for large logits (a clamp, such as PyTorch's "
                      "BCELoss at -100, or rounding of sigmoid to 0 or 1): compute from the "
                      f"logits, {STABLE_FORM}, which is exact everywhere")
    _jit_agrees("reconstruction", fn, cases[0],
                np.asarray(losses.reconstruction_loss(*cases[0])), "reconstruction")


# loss -------------------------------------------------------------------------------------

def check_loss(fn: Callable) -> None:
    ex = exercise("loss")
    cases = []
    for seed, batch in ((41, 4), (45, 1), (49, 7)):
        cases.append((_normal(seed, (batch, 28, 28, 1), 2.0), _gray_images(seed + 1, batch),
                      _normal(seed + 2, (batch, 32)),
                      jnp.exp(_normal(seed + 3, (batch, 32), 0.5))))
    for logits, images, mean, stddev in cases:
        batch = logits.shape[0]

        def explain(got):
            if got == (batch,):
                return ("loss returns one value per image: the course's batch loss is one "
                        "number, the sum over the images of reconstruction + KL")
            return None

        got = float(array(call(ex, fn, logits, images, mean, stddev), "loss", (),
                          explain_shape=explain))
        recon = np.asarray(losses.reconstruction_loss(logits, images), np.float64)
        kl = np.asarray(losses.kl_divergence(mean, stddev), np.float64)
        want = float((recon + kl).sum())
        if close(got, want):
            continue
        if batch > 1 and close(got, want / batch):
            raise Mistake("loss averages over the images where the course sums them: its loss "
                          "is the sum over the batch of reconstruction + KL, so its numbers "
                          "grow with the batch size")
        if close(got, recon.sum()):
            raise Mistake("the KL term is missing: without it nothing pulls q(z|x) towards the "
                          "prior N(0, I), and samples from the prior decode to nothing")
        if close(got, kl.sum()):
            raise Mistake("the reconstruction term is missing: without it the encoder learns "
                          "to ignore the image, since the KL alone is smallest when q(z|x) is "
                          "the prior")
        if close(got, (recon - kl).sum()):
            raise Mistake("the KL is subtracted: the loss is the negative ELBO, reconstruction "
                          "+ KL, both minimised")
        raise Mistake("loss differs from the course's: the sum over the images of the binary "
                      "cross-entropy (summed over pixels) plus the KL (summed over latents)")
    logits, images, mean, stddev = cases[0]
    _jit_agrees("loss", fn, cases[0],
                np.asarray(losses.vae_loss(logits, images, mean, stddev)[0]), "loss")


# sample -----------------------------------------------------------------------------------

def _linear_decoder(z_dim: int) -> tuple[Callable, np.ndarray]:
    """A stand-in decoder, latents (N, z_dim) -> logits (N, 28, 28, 1) through a fixed
    matrix, so the latents can be read back from the pixels; and the matrix."""
    weights = np.asarray(_normal(51, (z_dim, PIXELS), 0.3), np.float64)
    matrix = jnp.asarray(weights, jnp.float32)

    def decode(z):
        return (z @ matrix).reshape(z.shape[0], 28, 28, 1)

    return decode, weights


def _latents_of(images: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """The latents that decode to `images` through the stand-in decoder (least squares), and
    how far the images are from what those latents decode to."""
    pixels = np.clip(images.reshape(images.shape[0], -1), 1e-6, 1 - 1e-6)
    logits = np.log(pixels) - np.log1p(-pixels)
    latents = np.linalg.lstsq(weights.T, logits.T, rcond=None)[0].T
    redecoded = 1 / (1 + np.exp(-(latents @ weights)))
    return latents, float(np.abs(redecoded - images.reshape(images.shape[0], -1)).max())


def check_sample(fn: Callable) -> None:
    ex = exercise("sample")
    z_dim, num = 4, 2000
    decode, weights = _linear_decoder(z_dim)
    key, other_key = jax.random.key(52), jax.random.key(53)

    def draw(key, num):
        return array(call(ex, fn, key, decode, num, z_dim), "the samples", (num, 28, 28, 1),
                     explain_shape=lambda got: (
                         f"the samples have shape {got}: decode returns the images as (num, "
                         f"28, 28, 1), one per latent, so draw z with shape (num, z_dim)"
                         if got and got[0] != num else None))

    images = draw(key, num)
    if images.min() < 0 or images.max() > 1:
        raise Mistake("the samples are not in [0, 1]: decode gives logits, so apply "
                      "jax.nn.sigmoid to turn them into pixel intensities")
    latents, error = _latents_of(images, weights)
    if error > 1e-3:
        raise Mistake("the samples are not sigmoid(decode(z)) for any z: decode the latents "
                      "and apply jax.nn.sigmoid once, without rounding or thresholding")
    if not close(draw(key, num), images):
        raise Mistake("the same key gave different samples: draw z with "
                      "jax.random.normal(key, (num, z_dim)), so a key always gives the same "
                      "digits")
    if close(draw(other_key, num), images):
        raise Mistake("two different keys gave the same samples, so the key is ignored: draw "
                      "z from the key you are given")
    if np.allclose(latents, latents[:1], atol=1e-3):
        raise Mistake("every image decodes the same z: draw (num, z_dim) latents, one row per "
                      "image")
    average, spread = float(latents.mean()), float(latents.std())
    if abs(average) > 0.06 or abs(spread - 1) > 0.06:
        raise Mistake(f"the latents have mean {average:.2f} and standard deviation "
                      f"{spread:.2f}, but they must come from the prior N(0, I), the "
                      f"distribution training pulled every q(z|x) towards: "
                      f"jax.random.normal(key, (num, z_dim))")
    small = draw(key, 3)
    jitted = call_jitted(ex, lambda key: fn(key, decode, 3, z_dim), key)
    if not close(jitted, small, rtol=1e-4, atol=1e-4):
        raise Mistake("the samples differ under jax.jit: the function must depend only on its "
                      "arguments, so that compiling it changes nothing")


# iwae -------------------------------------------------------------------------------------

def check_iwae(fn: Callable) -> None:
    ex = exercise("iwae")
    moderate = [_normal(61, (5, 3), 2.0), _normal(62, (50, 4), 3.0), _normal(63, (1, 6))]
    for log_weights in moderate:
        samples, batch = log_weights.shape

        def explain(got):
            if got == (samples,):
                return ("iwae reduces over the wrong axis: the K samples of each image run "
                        "along axis 0 of the (K, B) log-weights")
            if got == ():
                return "iwae returns one number for the whole batch: one bound per image, (B,)"
            return None

        got = array(call(ex, fn, log_weights), "iwae", (batch,), explain_shape=explain)
        want = np.asarray(iwae_math.iwae_bound(log_weights, axis=0))
        if close(got, want):
            continue
        weights = np.asarray(log_weights, np.float64)
        if samples > 1 and close(got, weights.mean(0)):
            raise Mistake("the mean of the log-weights is the ELBO's estimate; the IWAE bound "
                          "is the log of the mean of the weights, log (1/K) Σ exp(log w_k), "
                          "which is tighter (Jensen's inequality)")
        if samples > 1 and close(got, want + math.log(samples)):
            raise Mistake("the 1/K is missing: log (1/K) Σ exp(log w_k) = logsumexp(log w) - "
                          "log K, an average of the K weights, not their sum")
        if samples > 1 and close(got, weights.max(0)):
            raise Mistake("the largest log-weight is not the bound: average the K weights, "
                          "log (1/K) Σ exp(log w_k)")
        raise Mistake("iwae differs from log (1/K) Σ_k exp(log w_k) over axis 0 of the (K, B) "
                      "log-weights")
    # Real log-weights are around -100 nats an image; exp of them underflows, exp of large
    # ones overflows.
    for shift in (-1000.0, 300.0):
        log_weights = _normal(64, (20, 3), 2.0, shift)
        got = array(call(ex, fn, log_weights), "iwae", (3,),
                    not_finite="iwae overflows: exp of a log-weight beyond about 88 is inf "
                               "in float32, and below about -104 it is 0, whose log is "
                               "-inf (an image's log-weights are around -100 nats); subtract "
                               "the largest log-weight before exp and add it back after "
                               "(the log-sum-exp trick), or use jax.nn.logsumexp")
        if not close(got, np.asarray(iwae_math.iwae_bound(log_weights, axis=0)), rtol=1e-5):
            raise Mistake("iwae loses precision for large log-weights: subtract the largest "
                          "log-weight before exp and add it back after (the log-sum-exp "
                          "trick), or use jax.nn.logsumexp")
    _jit_agrees("iwae", fn, (moderate[1],),
                np.asarray(iwae_math.iwae_bound(moderate[1], axis=0)), "iwae")

