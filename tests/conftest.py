"""Shared fixtures: a small batch of images, the model and its variables, built once.

The session shares one persistent XLA compilation cache with every process it starts
(the environment is inherited): the tests' many training subprocesses compile the same
few programs, and compiling is most of what such a short run costs on a CPU.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="vae-jax-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def images():
    """Eight 28x28x1 images in [0, 1] with digit-like structure (a blurred random blob)."""
    rng = np.random.default_rng(0)
    base = rng.uniform(size=(8, 28, 28, 1)).astype(np.float32)
    return np.clip(base * np.linspace(0, 1.5, 28)[None, :, None, None], 0, 1).astype(np.float32)


@pytest.fixture(scope="session")
def model():
    from vae_jax import VAE
    return VAE()


@pytest.fixture(scope="session")
def variables(model, images):
    return model.init(jax.random.key(0), images, jax.random.key(1), train=False)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """A finished three-epoch run (tests.helpers.run_in_process); copy it before changing it."""
    from tests.helpers import run_in_process
    workdir = tmp_path_factory.mktemp("uninterrupted")
    assert run_in_process(workdir) == 0
    return workdir
