"""The importance-weighted bound (vae_jax.model.iwae) against known likelihoods, and chunking."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vae_jax
from tests.helpers import untrained_variables
from vae_jax.evaluation import likelihood
from vae_jax.model import iwae, losses

B, Z = 6, 3


@pytest.fixture(scope="module")
def vae_variables():
    """Variables of an untrained VAE (z_dim 32)."""
    return untrained_variables()


@pytest.fixture(scope="module")
def toy():
    """Small images, fixed decoder logits that ignore z, and a posterior q(z|x)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(B, 4, 4, 1)).astype(np.float32)
    logits = rng.normal(size=(B, 4, 4, 1)).astype(np.float32)
    mean = rng.normal(scale=0.7, size=(B, Z)).astype(np.float32)
    stddev = rng.uniform(0.5, 1.5, size=(B, Z)).astype(np.float32)
    return images, logits, mean, stddev


# Jitted once per decoder (a static argument), as the command line does.
jitted_iwae = jax.jit(iwae.iwae_log_likelihood, static_argnums=(4, 5, 6),
                      static_argnames=("log_likelihood_fn",))


def iwae_over_seeds(num_seeds, images, mean, stddev, decode, num_samples, chunk=None,
                    **kwargs):
    """IWAE estimates with keys 0 .. num_seeds - 1 at once: (num_seeds, B)."""
    keys = jax.vmap(jax.random.key)(jnp.arange(num_seeds))
    run = jax.vmap(lambda key: iwae.iwae_log_likelihood(
        key, images, mean, stddev, decode, num_samples, chunk, **kwargs))
    return np.asarray(jax.jit(run)(keys))


def constant_decoder(logits):
    """A decoder that ignores z: sample k of image b gets image b's logits."""
    def decode(z):
        return jnp.tile(jnp.asarray(logits), (z.shape[0] // logits.shape[0], 1, 1, 1))
    return decode


def true_log_likelihood(images, logits):
    return -losses.reconstruction_loss(jnp.asarray(logits), jnp.asarray(images))


# --- pure math -------------------------------------------------------------------------------

def test_iwae_bound_is_log_mean_exp():
    log_weights = jnp.array([[-100.0, -3.0], [-101.0, -3.0], [-102.0, -3.0]])
    expected = [math.log(np.mean(np.exp([0.0, -1.0, -2.0]))) - 100.0, -3.0]
    np.testing.assert_allclose(iwae.iwae_bound(log_weights), expected, rtol=1e-6)
    np.testing.assert_allclose(iwae.iwae_bound(log_weights[:1]), log_weights[0])


def test_iwae_equals_exact_likelihood_when_q_is_the_prior(toy):
    """z-independent decoder and q = p(z): every weight is p(x), for any K and chunking."""
    images, logits, mean, _ = toy
    zeros, ones = np.zeros_like(mean), np.ones_like(mean)
    truth = true_log_likelihood(images, logits)
    decode = constant_decoder(logits)
    for num_samples, chunk in ((1, None), (5, 2)):
        estimate = jitted_iwae(jax.random.key(0), images, zeros, ones, decode, num_samples, chunk)
        np.testing.assert_allclose(estimate, truth, rtol=1e-6)


@pytest.mark.slow(reason="a convergence check over many importance samples")
def test_iwae_converges_to_exact_likelihood_with_a_mismatched_q(toy):
    """z-independent decoder, q != p(z): log p(x) = -BCE exactly; the IWAE estimate is a
    lower bound in expectation that converges to it as K grows."""
    images, logits, mean, stddev = toy
    truth = np.asarray(true_log_likelihood(images, logits))
    decode = constant_decoder(logits)
    gaps = {}
    for num_samples, seeds in ((1, 2000), (10, 500), (2000, 100)):
        estimates = iwae_over_seeds(seeds, images, mean, stddev, decode, num_samples, 500)
        gaps[num_samples] = float(np.mean(truth - estimates))
    # For this decoder the gap of K = 1 is E_q[log q(z|x) - log p(z)] = KL(q || p(z)) exactly.
    kl = float(np.mean(losses.kl_per_dimension(mean, stddev).sum(-1)))
    assert gaps[1] == pytest.approx(kl, rel=0.05)
    assert gaps[1] > gaps[10] > gaps[2000] >= -0.01
    # At K = 2000 the gap is 2.8% of K = 1's (0.028 ± 0.004 nats over 200 seeds); over these
    # 100 seeds its standard error is about 0.005 nats, so 5% is four of them above.
    assert gaps[2000] < 0.05 * gaps[1]


def test_iwae_is_exact_on_a_gaussian_toy_with_the_true_posterior():
    """z ~ N(0, I), x|z ~ N(z, s^2 I): log p(x) = log N(x; 0, (1 + s^2) I). With the true
    posterior as q every weight equals p(x); with a wider q the bound is below and tightens."""
    s = 0.5
    x = jnp.asarray(np.random.default_rng(1).normal(scale=math.sqrt(1 + s * s), size=(4, 2)),
                    jnp.float32)
    truth = iwae.gaussian_log_density(x, 0.0, math.sqrt(1 + s * s))
    decode = lambda z: z  # noqa: E731
    likelihood = lambda mean, x: iwae.gaussian_log_density(x, mean, s)  # noqa: E731
    posterior_mean = x / (1 + s * s)
    posterior_std = jnp.full_like(x, s / math.sqrt(1 + s * s))
    exact = jitted_iwae(jax.random.key(3), x, posterior_mean, posterior_std, decode, 7, 3,
                 log_likelihood_fn=likelihood)
    np.testing.assert_allclose(exact, truth, rtol=1e-5)
    wide = jnp.full_like(x, 1.0)
    one = iwae_over_seeds(500, x, posterior_mean, wide, decode, 1, log_likelihood_fn=likelihood)
    many = iwae_over_seeds(4, x, posterior_mean, wide, decode, 4000, 1000,
                           log_likelihood_fn=likelihood)
    assert abs(float(np.mean(truth - many))) < 0.01
    assert float(np.mean(truth - one)) > 0.1


def test_chunking_gives_the_same_result(toy):
    """Chunks of 1, 3 (a masked partial last chunk) and all 10 samples agree, and equal the
    log-mean-exp of the unchunked log-weights, with a decoder that depends on z."""
    images, logits, mean, stddev = toy

    def decode(z):
        return constant_decoder(logits)(z) + z[:, :1, None, None]

    key = jax.random.key(7)
    full = jitted_iwae(key, images, mean, stddev, decode, 10, None)
    for chunk in (1, 3):
        np.testing.assert_allclose(jitted_iwae(key, images, mean, stddev, decode, 10, chunk), full,
                                   rtol=1e-6)
    log_weights = jax.jit(iwae.importance_log_weights, static_argnums=(4, 5))(
        key, images, mean, stddev, decode, 10)
    np.testing.assert_allclose(iwae.iwae_bound(log_weights), full, rtol=1e-6)


def test_iwae_at_least_the_mean_log_weight_and_k1_is_one_weight(images, vae_variables):
    """For the same samples, log-mean-exp >= mean (Jensen): NLL_iwae <= the average
    single-sample negative ELBO estimate, with the real VAE decoder. K = 1 is one weight."""
    model = vae_jax.VAE()

    @jax.jit
    def compute(variables, images, key):
        mean, stddev = model.apply(variables, images, train=False, method=vae_jax.VAE.encode)
        decode = likelihood.decoder_fn(model, variables)
        z = iwae.sample_latents(key, mean, stddev, jnp.zeros((1,), jnp.int32))[0]
        return {
            "log_weights": iwae.importance_log_weights(key, images, mean, stddev, decode, 8),
            "bound": iwae.iwae_log_likelihood(key, images, mean, stddev, decode, 8, 3),
            "bound_k1": iwae.iwae_log_likelihood(key, images, mean, stddev, decode, 1),
            "reconstruction": losses.reconstruction_loss(decode(z), images),
            "log_q_minus_log_p": iwae.gaussian_log_density(z, mean, stddev)
            - iwae.gaussian_log_density(z, 0.0, 1.0)}

    out = jax.device_get(compute(vae_variables, jnp.asarray(images), jax.random.key(11)))
    log_weights = out["log_weights"]
    assert np.all(-out["bound"] <= -log_weights.mean(0) + 1e-4)
    assert np.all(-out["bound"] < -log_weights.mean(0))  # strictly: the weights differ
    np.testing.assert_allclose(out["bound_k1"], log_weights[0], rtol=1e-6)
    # The single weight is the ELBO's integrand at the ELBO's sample: its expectation over z
    # is minus the negative ELBO (log q - log p averages to the closed-form KL).
    np.testing.assert_allclose(-log_weights[0], out["reconstruction"]
                               + out["log_q_minus_log_p"], rtol=1e-5)
