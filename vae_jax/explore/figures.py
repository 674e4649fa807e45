"""Pictures for the explorer page, as RGB arrays: enlarged digits, strips and grids, and
the posterior beside the prior."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from vae_jax.evaluation import grids
from vae_jax.explore.latent_space import LatentUse, Posterior

DISPLAY_SCALE = 8  # a 28x28 digit is shown as 224x224, each pixel a visible square


def enlarge(image: np.ndarray, scale: int = DISPLAY_SCALE) -> np.ndarray:
    """A (H, W) or (H, W, 1) image in [0, 1] -> (H*scale, W*scale) uint8, pixels as
    squares (no smoothing: the page shows what the model sees)."""
    image = np.asarray(image, np.float32)
    if image.ndim == 3:
        image = image[..., 0]
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)


def strip(images: np.ndarray, scale: int = 3) -> np.ndarray:
    """Images (N, 28, 28, 1) side by side on one row, enlarged: uint8."""
    return enlarge(grids.tile(images, columns=len(images)), scale)


def grid(images: np.ndarray, scale: int = 2) -> np.ndarray:
    """Images (N, 28, 28, 1) as a square grid, enlarged: uint8."""
    return enlarge(grids.tile(images), scale)


def posterior_figure(posterior: Posterior, use: LatentUse) -> np.ndarray:
    """The posterior of one image beside the prior, as an RGB array (H, W, 3).

    Top: each latent's mean ± one standard deviation over the prior's ±1 band, in the
    sliders' order (most informative first), active dimensions in colour. Bottom: the KL
    of each dimension from the prior, in nats, with the reference images' mean KL.
    """
    order, dims = use.order, np.arange(len(use.order))
    active = use.active[order] if use.measured else np.ones(len(order), bool)
    picture = grids.figure(figsize=(7.2, 4.2))
    top, bottom = picture.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    top.axhspan(-1, 1, color="0.88", label="prior N(0, 1): ±1 std")
    top.axhline(0, color="0.6", linewidth=0.8)
    for mask, colour, name in ((active, "tab:blue", "active latent"),
                               (~active, "0.55", "inactive latent")):
        if mask.any():
            top.errorbar(dims[mask], posterior.mean[order][mask], posterior.stddev[order][mask],
                         fmt="o", color=colour, markersize=4, capsize=2,
                         label=f"{name}: mean ± std")
    top.set_ylabel("z")
    top.set_ylim(-4.5, 4.5)
    top.legend(loc="upper right", fontsize=7, ncols=3)
    top.set_title("q(z | x) beside the prior, most informative latents first", fontsize=10)
    bottom.bar(dims, posterior.kl[order], color=np.where(active, "tab:blue", "0.55"),
               label="this image")
    if use.measured:
        bottom.plot(dims, use.mean_kl[order], "_", color="tab:red", markersize=10,
                    markeredgewidth=2, label="mean over the test images")
    bottom.set_ylabel("KL (nats)")
    bottom.set_xticks(dims, [str(d) for d in order], fontsize=7)
    bottom.set_xlabel("latent dimension")
    bottom.legend(loc="upper right", fontsize=7)
    picture.tight_layout()
    canvas = FigureCanvasAgg(picture)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
