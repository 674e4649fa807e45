"""A pretrained model's fingerprint: its negative ELBO on fixed synthetic images.

Computed when the model is added (scripts/make_pretrained.py) and again by the tests, with
no dataset needed: the same weights give the same number, within float rounding.
"""

from __future__ import annotations

import jax
import numpy as np

from vae_jax.evaluation.elbo import neg_elbo
from vae_jax.model.vae import VAE

FINGERPRINT_IMAGES = 64


def fingerprint_images() -> np.ndarray:
    """64 fixed (28, 28, 1) images in [0, 1]: blurred random strokes, the same everywhere."""
    rng = np.random.default_rng(20261206)
    images = np.zeros((FINGERPRINT_IMAGES, 28, 28, 1), np.float32)
    for image in images:
        for _ in range(3):
            top, left = rng.integers(5, 17, size=2)
            image[top:top + rng.integers(4, 11), left:left + rng.integers(2, 7), 0] = 1.0
    return images


def fingerprint(model: VAE, variables: dict, binarize_mode: str = "none") -> dict:
    """`{"neg_elbo": ..., "images": 64, "seed": 0, "binarize": ...}` of `model`."""
    value = neg_elbo(model, variables, fingerprint_images(), jax.random.key(0),
                     batch_size=FINGERPRINT_IMAGES, binarize_mode=binarize_mode).averages()
    return {"neg_elbo": round(float(value["loss"]), 4), "images": FINGERPRINT_IMAGES,
            "seed": 0, "binarize": binarize_mode}
