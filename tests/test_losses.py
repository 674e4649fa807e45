"""Reparameterization, KL and binary cross-entropy: the math of the loss."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import reparameterize
from vae_jax.model import losses
from vae_jax.training.schedules import kl_weight_schedule


def test_reparameterize_same_key_same_sample_different_keys_differ():
    mean, stddev = jnp.zeros((4, 32)), jnp.ones((4, 32))
    first = reparameterize(jax.random.key(0), mean, stddev)
    chex.assert_trees_all_equal(first, reparameterize(jax.random.key(0), mean, stddev))
    assert not np.allclose(first, reparameterize(jax.random.key(1), mean, stddev))
    chex.assert_shape(first, (4, 32))


def test_reparameterize_gradients_are_one_and_eps():
    key = jax.random.key(3)
    mean, stddev = jnp.full((2, 5), 0.3), jnp.full((2, 5), 1.7)
    eps = jax.random.normal(key, mean.shape)
    grad_mean, grad_stddev = jax.grad(
        lambda m, s: reparameterize(key, m, s).sum(), argnums=(0, 1))(mean, stddev)
    chex.assert_trees_all_close(grad_mean, jnp.ones_like(mean))
    chex.assert_trees_all_close(grad_stddev, eps)
    chex.assert_trees_all_close(reparameterize(key, mean, stddev), mean + stddev * eps)


def test_kl_is_zero_at_the_standard_normal():
    chex.assert_trees_all_close(losses.kl_divergence(jnp.zeros((3, 32)), jnp.ones((3, 32))),
                                jnp.zeros(3), atol=1e-7)


def test_kl_matches_monte_carlo():
    mean = jnp.array([[0.5, -1.0, 2.0]])
    stddev = jnp.array([[0.3, 1.5, 0.8]])
    z = mean + stddev * jax.random.normal(jax.random.key(0), (400_000, 3))
    log_q = jax.scipy.stats.norm.logpdf(z, mean, stddev).sum(-1)
    log_p = jax.scipy.stats.norm.logpdf(z).sum(-1)
    monte_carlo = float(jnp.mean(log_q - log_p))
    exact = float(losses.kl_divergence(mean, stddev)[0])
    assert abs(monte_carlo - exact) < 0.02, (monte_carlo, exact)
    assert exact > 0


def test_bce_from_logits_equals_probability_form():
    logits = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1), minval=-6, maxval=6)
    targets = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    probs = jax.nn.sigmoid(logits)
    expected = -(targets * jnp.log(probs) + (1 - targets) * jnp.log1p(-probs)).sum((1, 2, 3))
    chex.assert_trees_all_close(losses.reconstruction_loss(logits, targets), expected,
                                rtol=1e-5)


def test_bce_is_finite_for_saturated_logits():
    logits = jnp.array([[-200.0, 200.0]]).reshape(1, 1, 2, 1)
    targets = jnp.array([[1.0, 0.0]]).reshape(1, 1, 2, 1)
    value = losses.reconstruction_loss(logits, targets)
    chex.assert_tree_all_finite(value)
    chex.assert_trees_all_close(value, jnp.array([400.0]))


def test_vae_loss_sums_over_the_batch_and_reports_means_per_image():
    logits = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    targets = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    mean, stddev = jnp.full((3, 32), 0.5), jnp.full((3, 32), 0.7)
    total, metrics = losses.vae_loss(logits, targets, mean, stddev)
    reconstruction = losses.reconstruction_loss(logits, targets)
    kl = losses.kl_divergence(mean, stddev)
    chex.assert_trees_all_close(total, (reconstruction + kl).sum(), rtol=1e-6)
    chex.assert_trees_all_close(
        metrics, {"loss": (reconstruction + kl).mean(), "reconstruction": reconstruction.mean(),
                  "kl": kl.mean()}, rtol=1e-6)


B, Z = 6, 3


def test_kl_per_dimension_sums_to_the_loss_kl_and_vanishes_at_the_prior():
    rng = np.random.default_rng(0)
    mean = rng.normal(scale=0.7, size=(B, Z)).astype(np.float32)
    stddev = rng.uniform(0.5, 1.5, size=(B, Z)).astype(np.float32)
    per_dim = losses.kl_per_dimension(mean, stddev)
    assert per_dim.shape == (B, Z) and np.all(np.asarray(per_dim) >= 0)
    np.testing.assert_allclose(per_dim.sum(-1), losses.kl_divergence(mean, stddev), rtol=1e-6)
    np.testing.assert_allclose(losses.kl_per_dimension(np.zeros(3), np.ones(3)), 0.0)
    np.testing.assert_allclose(losses.kl_per_dimension(np.array([2.0]), np.array([1.0])), 2.0)


def test_the_kl_weight_weighs_the_loss_but_not_the_reported_elbo():
    logits = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    targets = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    mean, stddev = jnp.full((3, 32), 0.5), jnp.full((3, 32), 0.7)
    reconstruction = losses.reconstruction_loss(logits, targets).sum()
    kl = losses.kl_divergence(mean, stddev).sum()
    course, course_metrics = losses.vae_loss(logits, targets, mean, stddev)
    for weight, expected in ((1.0, reconstruction + kl), (0.0, reconstruction),
                             (4.0, reconstruction + 4 * kl)):
        loss, metrics = losses.vae_loss(logits, targets, mean, stddev, kl_weight=weight)
        chex.assert_trees_all_close(loss, expected, rtol=1e-6)
        chex.assert_trees_all_equal(metrics, course_metrics)  # always the true ELBO
    chex.assert_trees_all_equal(losses.vae_loss(logits, targets, mean, stddev, 1.0)[0], course)


def test_the_kl_weight_warms_up_linearly_step_by_step():
    schedule = kl_weight_schedule(weight=2.0, warmup_steps=4)
    np.testing.assert_allclose([schedule(step) for step in range(6)],
                               [0.0, 0.5, 1.0, 1.5, 2.0, 2.0])
    assert float(kl_weight_schedule(0.5)(0)) == 0.5


def test_bce_equals_optax_sigmoid_binary_cross_entropy():
    # One softplus and a row sum by matmul: the same numbers as optax's two-softplus form.
    logits = 8 * jax.random.normal(jax.random.key(2), (16, 28, 28, 1))
    targets = jax.random.uniform(jax.random.key(3), (16, 28, 28, 1))
    expected = optax.sigmoid_binary_cross_entropy(logits, targets).sum((1, 2, 3))
    chex.assert_trees_all_close(losses.reconstruction_loss(logits, targets), expected,
                                rtol=1e-6)
    chex.assert_trees_all_close(
        jax.grad(lambda z: losses.reconstruction_loss(z, targets).sum())(logits),
        jax.grad(lambda z: optax.sigmoid_binary_cross_entropy(z, targets).sum())(logits),
        rtol=1e-5, atol=1e-6)
