"""The notebooks' two modes: a full run for learners, and the test suite's quick one.

The learner's cell asks for what it wants to show, `run = notebook_mode.settings(
train_images=20_000, test_images=2_000, epochs=5)`. The test suite sets
VAE_JAX_NOTEBOOK_QUICK=1 (at most `QUICK_TRAIN_IMAGES` and `QUICK_TEST_IMAGES` images, one
epoch) and, offline where MNIST is not prepared, VAE_JAX_NOTEBOOK_MOCK_DATA=1 (tfds's mock
MNIST, random images of MNIST's shape); VAE_JAX_NOTEBOOK_RUNS names the folder for the
runs (default: a new temporary one). Only the pictures and numbers change between modes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile

QUICK_TRAIN_IMAGES = 512
QUICK_TEST_IMAGES = 256


def quick() -> bool:
    """Whether the notebook runs in the test suite's quick mode."""
    return os.environ.get("VAE_JAX_NOTEBOOK_QUICK") == "1"


def data():
    """A context in which tfds reads its mock MNIST (the offline quick mode), else nothing."""
    if os.environ.get("VAE_JAX_NOTEBOOK_MOCK_DATA"):
        from vae_jax.data.input_pipeline import import_tfds
        return import_tfds().testing.mock_data(num_examples=QUICK_TRAIN_IMAGES)
    return contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class NotebookRun:
    """What a notebook trains on: tfds splits, epochs, and the folder its runs write."""

    train_split: str
    test_split: str
    epochs: int
    runs: str

    def data(self):
        """The context to read the data in (`data()`)."""
        return data()


def settings(*, train_images: int, test_images: int, epochs: int) -> NotebookRun:
    """The first `train_images` and `test_images` of MNIST for `epochs` epochs (fewer in
    quick mode), and where the runs go."""
    if quick():
        train_images = min(train_images, QUICK_TRAIN_IMAGES)
        test_images = min(test_images, QUICK_TEST_IMAGES)
        epochs = 1
    runs = os.environ.get("VAE_JAX_NOTEBOOK_RUNS") or tempfile.mkdtemp(prefix="vae-jax-runs-")
    return NotebookRun(f"train[:{train_images}]", f"test[:{test_images}]", epochs, runs)
