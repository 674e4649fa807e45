"""vae-jax: the DeepLearning.AI GANs course's convolutional VAE in JAX/Flax.

The names below load on first use, so that `import vae_jax.hugepages` (which `train.py`
runs before anything else) does not pull in JAX.
"""

import importlib

_HOMES = {"VAE": "vae_jax.models", "Decoder": "vae_jax.models", "Encoder": "vae_jax.models",
          "reparameterize": "vae_jax.models", "load_model": "vae_jax.checkpoints",
          "load_variables": "vae_jax.checkpoints", "save_variables": "vae_jax.checkpoints"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'vae_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
