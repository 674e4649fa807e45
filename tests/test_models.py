"""The modules' shapes, parameter count, positivity of stddev and input checks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vae_jax
from vae_jax import VAE, Decoder, Encoder


def test_public_api():
    assert {"VAE", "Encoder", "Decoder", "load_variables", "reparameterize"} <= set(
        vae_jax.__all__)


def test_parameter_count_matches_the_original(variables):
    counts = {part: sum(leaf.size for leaf in jax.tree.leaves(variables["params"][part]))
              for part in ("encoder", "decoder")}
    assert counts == {"encoder": 41_424, "decoder": 674_113}


def test_variable_collections(variables):
    assert set(variables) == {"params", "batch_stats"}
    chex.assert_trees_all_equal_shapes(
        variables["batch_stats"]["encoder"],
        {"bn1": {"mean": jnp.zeros(16), "var": jnp.zeros(16)},
         "bn2": {"mean": jnp.zeros(32), "var": jnp.zeros(32)}})


class ModuleShapesTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_encoder_shapes(self):
        encoder = Encoder(z_dim=5)
        x = jnp.ones((3, 28, 28, 1))
        variables = encoder.init(jax.random.key(0), x, train=False)
        mean, stddev = self.variant(lambda v, x: encoder.apply(v, x, train=False))(variables, x)
        chex.assert_shape([mean, stddev], (3, 5))

    @chex.variants(with_jit=True, without_jit=True)
    def test_decoder_shapes(self):
        decoder = Decoder(z_dim=5)
        z = jnp.ones((3, 5))
        variables = decoder.init(jax.random.key(0), z, train=False)
        logits = self.variant(lambda v, z: decoder.apply(v, z, train=False))(variables, z)
        chex.assert_shape(logits, (3, 28, 28, 1))

    @chex.variants(with_jit=True, without_jit=True)
    def test_vae_shapes_and_methods(self):
        model = VAE(z_dim=7)
        x = jnp.full((2, 28, 28, 1), 0.5)
        variables = model.init(jax.random.key(0), x, jax.random.key(1), train=False)
        logits, mean, stddev = self.variant(
            lambda v, x, k: model.apply(v, x, k, train=False))(variables, x, jax.random.key(2))
        chex.assert_shape(logits, (2, 28, 28, 1))
        chex.assert_shape([mean, stddev], (2, 7))
        encoded = model.apply(variables, x, train=False, method=VAE.encode)
        chex.assert_trees_all_close(encoded, (mean, stddev))
        decoded = model.apply(variables, mean, train=False, method=VAE.decode)
        chex.assert_shape(decoded, (2, 28, 28, 1))


def test_decoder_sees_the_sample_not_the_mean(model, variables, images):
    """Different keys give different reconstructions: z is sampled, not the mean."""
    first = model.apply(variables, images, jax.random.key(1), train=False)[0]
    second = model.apply(variables, images, jax.random.key(2), train=False)[0]
    again = model.apply(variables, images, jax.random.key(1), train=False)[0]
    chex.assert_trees_all_equal(first, again)
    assert float(jnp.abs(first - second).max()) > 1e-4


def test_stddev_is_positive_for_extreme_inputs(model, variables):
    extremes = jnp.stack([jnp.zeros((28, 28, 1)), jnp.ones((28, 28, 1)),
                          jnp.full((28, 28, 1), 1e4), jnp.full((28, 28, 1), -1e4)])
    _, stddev = model.apply(variables, extremes, train=False, method=VAE.encode)
    assert bool(jnp.all(stddev >= 0))
    # exp() underflows to 0 only for a log-stddev below about -87; these inputs stay positive.
    mean, stddev = model.apply(variables, extremes[:2], train=False, method=VAE.encode)
    assert bool(jnp.all(stddev > 0))
    chex.assert_tree_all_finite((mean, stddev))


def test_second_half_is_log_stddev(model, variables, images):
    """stddev is exp of the last convolution's second half (the code's reading, not 'log var')."""
    _, state = model.apply(variables, images, train=False, method=VAE.encode,
                           capture_intermediates=True)
    raw = state["intermediates"]["encoder"]["conv3"]["__call__"][0].reshape(len(images), -1)
    mean, stddev = model.apply(variables, images, train=False, method=VAE.encode)
    chex.assert_trees_all_close((mean, stddev), (raw[:, :32], jnp.exp(raw[:, 32:])),
                                rtol=1e-6)


@pytest.mark.parametrize("shape, message", [
    ((28, 28, 1), "images must have shape (B, 28, 28, 1), got (28, 28, 1)"),
    ((2, 32, 32, 1), "got (2, 32, 32, 1)"),
    ((2, 28, 28, 3), "got (2, 28, 28, 3)"),
])
def test_bad_image_shapes_raise(model, variables, shape, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model.apply(variables, jnp.zeros(shape), train=False, method=VAE.encode)


def test_integer_images_raise(model, variables):
    with pytest.raises(ValueError, match="floating point"):
        model.apply(variables, np.zeros((2, 28, 28, 1), np.uint8), train=False,
                    method=VAE.encode)


def test_bad_latent_shape_raises(model, variables):
    with pytest.raises(ValueError, match=r"z must have shape \(B, 32\), got \(2, 16\)"):
        model.apply(variables, jnp.zeros((2, 16)), train=False, method=VAE.decode)
