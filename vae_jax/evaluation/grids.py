"""Image grids and figures written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure


def tile(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """(N, H, W, 1) images in [0, 1] -> one (rows*(H+2), columns*(W+2)) grayscale mosaic."""
    count, height, width = images.shape[:3]
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    mosaic = np.ones((rows * (height + 2), columns * (width + 2)), np.float32)
    for index, image in enumerate(np.asarray(images)[..., 0]):
        row, column = divmod(index, columns)
        top, left = row * (height + 2) + 1, column * (width + 2) + 1
        mosaic[top:top + height, left:left + width] = image
    return mosaic


def figure(**kwargs) -> Figure:
    """A matplotlib figure that needs no display and no pyplot (so no global state)."""
    return Figure(**kwargs)


def save_figure(figure: Figure, path: str) -> None:
    """Writes a matplotlib figure as a PNG file (100 dpi, tight)."""
    figure.savefig(path, dpi=100, bbox_inches="tight")


def save_reconstructions(path: str, images: np.ndarray, reconstructions: np.ndarray,
                         title: str = "") -> None:
    """Two 5x5 grids side by side, "True" and "Reconstructed", as the course shows them."""
    picture = figure(figsize=(8, 4.4))
    left, right = picture.subplots(1, 2)
    for axis, grid, name in ((left, images, "True"), (right, reconstructions, "Reconstructed")):
        axis.imshow(tile(grid[:25], columns=5), cmap="gray", vmin=0, vmax=1)
        axis.set_title(name)
        axis.axis("off")
    if title:
        picture.suptitle(title)
    save_figure(picture, path)


def save_samples(path: str, samples: np.ndarray, title: str = "") -> None:
    """A square grid of decoded samples (N, H, W, 1)."""
    picture = figure(figsize=(5, 5.3))
    axis = picture.subplots()
    axis.imshow(tile(samples), cmap="gray", vmin=0, vmax=1)
    axis.axis("off")
    if title:
        axis.set_title(title)
    save_figure(picture, path)
