"""vae-jax: the DeepLearning.AI GANs course's convolutional VAE in JAX/Flax.

The package by job (each folder's `__init__` says more):

* `model/`: the course's VAE: its Flax modules, loss, IWAE bound, binarization, metrics
  (`vae_jax.nnx`: the same model in Flax NNX);
* `kernels/`: how its convolutions are computed (matmul/im2col, Winograd, XLA);
* `data/`: tfds splits (or an .npz file) as arrays, batch order from a key;
* `training/`: settings, train state, steps, the loop, hooks, writers, exact resume;
* `checkpoints/`: what a run saves (orbax checkpoints with digests, saved variables, the
  run directory and its lock);
* `evaluation/`: ELBO and IWAE passes, pooling, plots, sampling;
* `interop/`: the PyTorch original and weights to and from it;
* `runtime/`: devices and processes, platforms, huge pages, errors, native log lines;
* `commands/`: the command lines, each a thin layer over the library;
* `benchmarks/`: timing and profiling (`vae-jax-bench`), not loaded by `import vae_jax`.

The names below load on first use, so that `import vae_jax.runtime.hugepages` (which
`train.py` runs before anything else) does not pull in JAX. `vae_jax.__version__` is the
installed distribution's version (pyproject.toml's, its one definition).
"""

import importlib

DISTRIBUTION = "vae-jax"


def installed_version() -> str:
    """The version of the installed vae-jax, from its metadata ("unknown" when the package
    is imported from a folder that was never installed)."""
    import importlib.metadata  # here, not above: `import vae_jax` stays light
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"

_HOMES = {"VAE": "vae_jax.model.vae", "Decoder": "vae_jax.model.vae",
          "Encoder": "vae_jax.model.vae", "reparameterize": "vae_jax.model.vae",
          "load_model": "vae_jax.checkpoints.saved_model",
          "load_variables": "vae_jax.checkpoints.saved_model",
          "save_variables": "vae_jax.checkpoints.saved_model"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name == "__version__":
        return installed_version()
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'vae_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
