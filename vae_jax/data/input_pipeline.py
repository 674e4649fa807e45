"""Data: 28x28 grayscale tfds datasets (mnist, fashion_mnist, kmnist, ...), or an arrays
file (`vae_jax.data.arrays`, a path ending in .npz), as float arrays.

The whole split is loaded into memory (MNIST's train split is 188 MB as float32), and
batches are taken by index from a permutation derived from a PRNG key, so the data order
is a pure function of (key, epoch).
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import threading
from typing import Callable, Iterator

import jax
import numpy as np

from vae_jax.data import arrays
from vae_jax.model.vae import IMAGE_SIZE
from vae_jax.runtime import interrupts, native_output
from vae_jax.runtime.errors import DatasetError

IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
DOWNLOAD_NOTICE_SECONDS = 2.0  # a download still running after this says what it is doing


def resolve_data_dir(data_dir: str | None) -> str:
    """The directory tfds reads: `data_dir`, else $TFDS_DATA_DIR, else tfds' default."""
    if data_dir:
        return os.path.abspath(os.path.expanduser(data_dir))
    if os.environ.get("TFDS_DATA_DIR"):
        return os.path.abspath(os.path.expanduser(os.environ["TFDS_DATA_DIR"]))
    return os.path.expanduser(import_tfds().core.constants.DATA_DIR)


def import_tfds():
    """tensorflow_datasets, with TensorFlow quiet (errors only) and kept off any GPU (the
    GPU is JAX's). Imported here, when data is needed, not with the package: TensorFlow
    takes seconds to import, and sampling or plotting from saved variables never needs it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with native_output.filtered(), interrupts.deferred():
            import tensorflow as tf
            import tensorflow_datasets as tfds
            tf.config.set_visible_devices([], "GPU")
    except ImportError as error:
        raise DatasetError(f"cannot import tensorflow-datasets, which reads the data: "
                           f"{type(error).__name__}: {_first_line(error)}") from None
    return tfds


def load_split(name: str, split: str, data_dir: str | None = None, *, download: bool = True,
               log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Loads a whole tfds split: images (N, 28, 28, 1) float32 in [0, 1], labels (N,) int32.

    A `name` ending in .npz is an arrays file, read with NumPy and no TensorFlow
    (`vae_jax.data.arrays`; `data_dir` and `download` do not apply).
    Raises DatasetError with one line naming the dataset (and the data directory or the
    split) when the name or the split cannot be parsed or is unknown, the split selects no
    images, the dataset is not 28x28 grayscale images with labels, it is not prepared and
    not downloadable, or its files cannot be read. A download still running after a moment
    says so through `log` (default: stderr), and where it goes.
    """
    if not name.strip():
        raise DatasetError("the dataset name is empty")
    if arrays.is_arrays_file(name):
        return arrays.load_split(os.path.expanduser(name), split)
    with native_output.filtered():  # TensorFlow's log lines while it reads
        return _load_split(name, split, data_dir, download, log)


def _load_split(name: str, split: str, data_dir: str | None, download: bool,
                log: Callable[[str], None] | None) -> tuple[np.ndarray, np.ndarray]:
    tfds = import_tfds()
    directory = resolve_data_dir(data_dir)
    builder = _builder(tfds, name, directory)
    if builder.is_prepared():
        _check_split(builder, name, split)
    elif not download:
        raise DatasetError(f"dataset {name!r} is not prepared in {directory} and downloading "
                           f"is off")
    else:
        notice = (f"dataset {name!r} is not prepared in {directory}: downloading and "
                  "preparing it with tensorflow-datasets (this needs the internet; "
                  "--no-download fails at once instead)")
        try:
            with _notice_after(DOWNLOAD_NOTICE_SECONDS, notice, log or _to_stderr):
                builder.download_and_prepare()
        except (OSError, tfds.core.download.DownloadError) as error:
            raise DatasetError(f"dataset {name!r} is not in {directory} and downloading it "
                               f"failed: {type(error).__name__}: {_first_line(error)}"
                               ) from None
    try:
        dataset = builder.as_dataset(split=split, batch_size=10_000)
    except (ValueError, KeyError) as error:  # a split only a fresh download could check
        raise DatasetError(f"split {split!r} of dataset {name!r}: {_first_line(error)}"
                           ) from None
    images, labels, failure = [], [], None
    batches = iter(tfds.as_numpy(dataset))
    try:
        for batch in batches:
            images.append(batch["image"])
            labels.append(batch["label"])
    except Exception as error:  # TensorFlow's errors for damaged files (DataLossError, ...)
        failure = f"{type(error).__name__}: {_first_line(error)}"
    # The iterator goes now, while TensorFlow's lines about it are still filtered, not
    # when the traceback of the error below lets go of it.
    del batches, dataset
    gc.collect()
    if failure:
        raise DatasetError(f"cannot read split {split!r} of dataset {name!r} in {directory}: "
                           f"its files look damaged ({failure})")
    if not images:
        raise DatasetError(f"split {split!r} of dataset {name!r} in {directory} is empty")
    images = np.concatenate(images).astype(np.float32) / 255.0
    return images, np.concatenate(labels).astype(np.int32)


def _builder(tfds, name: str, directory: str):
    """tfds' builder of `name`, checked to hold 28x28 grayscale images with labels."""
    try:
        builder = tfds.builder(name, data_dir=directory)
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetError(f"unknown tfds dataset {name!r}") from None
    except (ValueError, AssertionError) as error:  # unparsable names, unknown versions
        raise DatasetError(f"cannot use dataset {name!r}: {_first_line(error)}") from None
    features = builder.info.features
    if not all(key in features for key in ("image", "label")):
        raise DatasetError(f"dataset {name!r} has no 'image' and 'label' features (it has "
                           f"{', '.join(features.keys())}); the course model needs 28x28 "
                           "grayscale images")
    image_shape = tuple(features["image"].shape)
    if image_shape != IMAGE_SHAPE:
        raise DatasetError(f"dataset {name!r} has images of shape {image_shape}; "
                           f"the course model needs {IMAGE_SHAPE}")
    return builder


def _check_split(builder, name: str, split: str) -> None:
    """Raises DatasetError unless `split` parses, exists and selects at least one image."""
    try:
        count = builder.info.splits[split].num_examples
    except (ValueError, KeyError) as error:
        raise DatasetError(f"split {split!r} of dataset {name!r}: {_first_line(error)}"
                           ) from None
    if count <= 0:
        raise DatasetError(f"split {split!r} of dataset {name!r} selects no images")


def _first_line(error: Exception) -> str:
    """A tfds error message on one line, without its links (at most 300 characters)."""
    text = " ".join(str(error).split())
    text = re.sub(r"\s*See format at:? \S+|\{\{.*?\}\}\s*|\s*\[Op:.*$", "", text)
    return text[:300] or type(error).__name__


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


@contextlib.contextmanager
def _notice_after(seconds: float, message: str, log: Callable[[str], None]) -> Iterator[None]:
    """Calls `log(message)` if the body is still running after `seconds` (a download that
    takes a while says what it is doing; one that finishes at once says nothing)."""
    timer = threading.Timer(seconds, log, (message,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


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
