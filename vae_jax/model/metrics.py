"""Statistics over a dataset's per-image values: mean ± standard error, and latent use.

A latent dimension is *active* (Burda et al. 2015) when its posterior mean E_q[z|x] varies
over the data: the variance over the images exceeds ACTIVE_UNIT_THRESHOLD.
"""

from __future__ import annotations

import math

import numpy as np

ACTIVE_UNIT_THRESHOLD = 0.01


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """The mean of per-image values (N,) and its standard error (sample std / sqrt(N))."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))


def latent_activity(means: np.ndarray) -> np.ndarray:
    """Burda et al.'s activity of each latent dimension: the variance over the data of the
    posterior mean E_q[z|x]. (N, z) -> (z,)."""
    return np.var(np.asarray(means, np.float64), axis=0)


def active_units(means: np.ndarray, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """How many latent dimensions have activity (variance over the data of E_q[z|x]) above
    `threshold` (Burda et al. use 0.01). means: (N, z)."""
    return int(np.sum(latent_activity(means) > threshold))
