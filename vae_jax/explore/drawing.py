"""A drawing from the page as the encoder expects it: an MNIST-style 28x28 image.

MNIST's digits were size-normalized to fit a 20x20 box (keeping their aspect ratio, with
anti-aliasing) and centred in 28x28 by their centre of mass (LeCun et al.); a drawing gets
the same treatment, so a digit drawn anywhere on the canvas, at any size, looks to the
encoder like the images it was trained on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from vae_jax.model.vae import IMAGE_SIZE
from vae_jax.runtime.errors import InputError

DIGIT_BOX = 20         # MNIST's digits fit a 20x20 box inside the 28x28 image
INK_THRESHOLD = 0.05   # a pixel with less ink than this is background


class EmptyDrawing(InputError):
    """The canvas holds no ink."""


def canvas_ink(canvas) -> np.ndarray:
    """The ink (H, W) in [0, 1] of the page's sketchpad value.

    `canvas` is gradio's editor value, `{"background", "layers", "composite"}` with RGBA or
    RGB arrays, or one such array. The layers' opacity is the ink (whatever the brush's
    colour); without layers, dark strokes on the light composite are.
    """
    if canvas is None:
        raise EmptyDrawing("the canvas is empty: draw a digit first")
    if isinstance(canvas, dict):
        layers = [np.asarray(layer) for layer in canvas.get("layers") or [] if layer is not None]
        if layers and all(layer.ndim == 3 and layer.shape[-1] == 4 for layer in layers):
            return np.max([layer[..., 3] for layer in layers], axis=0).astype(np.float32) / 255
        canvas = canvas.get("composite")
        if canvas is None:
            raise EmptyDrawing("the canvas is empty: draw a digit first")
    pixels = np.asarray(canvas, np.float32) / 255
    if pixels.ndim == 3:
        pixels = pixels[..., :3].mean(axis=-1)
    if pixels.ndim != 2:
        raise InputError(f"a drawing must be an image, got shape {np.shape(canvas)}")
    return 1 - pixels


def to_digit_image(ink: np.ndarray) -> np.ndarray:
    """Ink (H, W) in [0, 1] -> (28, 28, 1) float32: cropped to the ink, scaled to fit a
    20x20 box, centred by its centre of mass. Raises EmptyDrawing without ink."""
    ink = np.clip(np.asarray(ink, np.float32), 0, 1)
    rows, columns = np.nonzero(ink > INK_THRESHOLD)
    if rows.size == 0:
        raise EmptyDrawing("the canvas is empty: draw a digit first")
    crop = ink[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    scale = DIGIT_BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    digit = np.asarray(Image.fromarray(crop, mode="F").resize(size, Image.Resampling.LANCZOS))
    digit = np.clip(digit, 0, 1)
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    total = digit.sum()
    centre = (np.array([(digit.sum(axis=1) * np.arange(digit.shape[0])).sum(),
                        (digit.sum(axis=0) * np.arange(digit.shape[1])).sum()]) / total
              if total > 0 else (np.array(digit.shape) - 1) / 2)
    top, left = np.clip(np.round((IMAGE_SIZE - 1) / 2 - centre).astype(int), 0,
                        IMAGE_SIZE - np.array(digit.shape))
    image[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return image[..., None]


def drawing_to_image(canvas) -> np.ndarray:
    """The page's sketchpad value -> the (28, 28, 1) image the encoder sees."""
    return to_digit_image(canvas_ink(canvas))
