"""Statistics over per-image values: mean and standard error, latent activity, active units."""

import numpy as np
import pytest

from vae_jax.model import metrics


def test_active_units_counts_dimensions_whose_mean_varies():
    rng = np.random.default_rng(0)
    means = np.stack([rng.normal(scale=1.0, size=1000),     # active
                      rng.normal(scale=0.2, size=1000),     # variance 0.04: active
                      rng.normal(scale=0.05, size=1000),    # variance 0.0025: inactive
                      np.full(1000, 3.0)], axis=1)          # constant: inactive
    np.testing.assert_allclose(metrics.latent_activity(means)[:2], [1.0, 0.04], rtol=0.1)
    assert metrics.active_units(means) == 2
    assert metrics.active_units(means, threshold=0.001) == 3


def test_mean_and_stderr():
    mean, stderr = metrics.mean_and_stderr(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and stderr == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
