"""Shared fixtures: a small batch of images, the model and its variables, built once."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
