"""Helpers shared by the tests of vae_jax.evaluate, vae_jax.sample and vae_jax.plots."""

import jax
import jax.numpy as jnp
import numpy as np

import vae_jax

MODEL_CONFIG = {"z_dim": 32, "im_chan": 1}


def untrained_variables(seed: int = 0) -> dict:
    """Variables of an untrained VAE (z_dim 32) without compiling `VAE().init`.

    The shapes come from `jax.eval_shape` (no compilation); kernels are uniform in
    ±1/sqrt(fan_in), biases 0, BatchNorm scale 1 and its running statistics mean 0, var 1.
    """
    shapes = jax.eval_shape(lambda: vae_jax.VAE().init(
        jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jax.random.key(1), train=False))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            bound = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
            return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
        value = 1.0 if name in ("scale", "var") else 0.0
        return np.full(leaf.shape, value, np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def save_untrained(workdir) -> str:
    """Saves untrained variables and config.json into `workdir`; returns it as a string."""
    vae_jax.save_variables(str(workdir), untrained_variables(), MODEL_CONFIG)
    return str(workdir)
