"""Data: 28x28 grayscale tfds datasets (mnist, fashion_mnist, kmnist, ...) as float arrays.

The whole split is loaded into memory (MNIST's train split is 188 MB as float32), and
batches are taken by index from a permutation derived from a PRNG key, so the data order
is a pure function of (key, epoch).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from vae_jax.errors import InputError
from vae_jax.models import IMAGE_SIZE

IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)


class DatasetError(InputError):
    """The dataset is unknown, missing, or not 28x28 grayscale images."""


def resolve_data_dir(data_dir: str | None) -> str:
    """The directory tfds reads: `data_dir`, else $TFDS_DATA_DIR, else tfds' default."""
    if data_dir:
        return os.path.abspath(os.path.expanduser(data_dir))
    if os.environ.get("TFDS_DATA_DIR"):
        return os.path.abspath(os.path.expanduser(os.environ["TFDS_DATA_DIR"]))
    return os.path.expanduser(_import_tfds().core.constants.DATA_DIR)


def _import_tfds():
    """tensorflow_datasets, with TensorFlow quiet (errors only) and kept off any GPU (the
    GPU is JAX's). Imported here, when data is needed, not with the package: TensorFlow
    takes seconds to import, and sampling or plotting from saved variables never needs it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tensorflow_datasets as tfds
    tf.config.set_visible_devices([], "GPU")
    return tfds


def load_split(name: str, split: str, data_dir: str | None = None, *, download: bool = True,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Loads a whole tfds split: images (N, 28, 28, 1) float32 in [0, 1], labels (N,) int32.

    Raises DatasetError with one line naming the dataset and the data directory when the
    dataset is unknown, not prepared there and not downloadable, or not 28x28 grayscale.
    """
    tfds = _import_tfds()
    directory = resolve_data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=directory)
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetError(f"unknown tfds dataset {name!r}") from None
    image_shape = tuple(builder.info.features["image"].shape)
    if image_shape != IMAGE_SHAPE:
        raise DatasetError(f"dataset {name!r} has images of shape {image_shape}; "
                           f"the course model needs {IMAGE_SHAPE}")
    try:
        dataset = tfds.load(name, split=split, data_dir=directory, download=download,
                            batch_size=10_000)
    except AssertionError:  # tfds' way of saying the data is not in the directory
        raise DatasetError(f"dataset {name!r} is not prepared in {directory} and downloading "
                           f"is off") from None
    except (OSError, tfds.core.download.DownloadError) as error:
        raise DatasetError(f"dataset {name!r} is not in {directory} and downloading it "
                           f"failed: {type(error).__name__}") from None
    images, labels = [], []
    for batch in tfds.as_numpy(dataset):
        images.append(batch["image"])
        labels.append(batch["label"])
    if not images:
        raise DatasetError(f"split {split!r} of dataset {name!r} in {directory} is empty")
    images = np.concatenate(images).astype(np.float32) / 255.0
    return images, np.concatenate(labels).astype(np.int32)


def epoch_permutation(key: jax.Array, num_examples: int) -> jax.Array:
    """The order of the examples in one epoch: a permutation of range(num_examples)."""
    return jax.random.permutation(key, num_examples)


def num_batches(num_examples: int, batch_size: int) -> int:
    """How many batches cover `num_examples`: the last may be smaller."""
    return -(-num_examples // batch_size)


def batch_slices(num_examples: int, batch_size: int) -> list[slice]:
    """Consecutive batches covering every example; the last may be smaller."""
    return [slice(start, min(start + batch_size, num_examples))
            for start in range(0, num_examples, batch_size)]
