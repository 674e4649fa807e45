"""A dataset as one NumPy `.npz` file, read without TensorFlow.

Anywhere a dataset is named (`--dataset`), a path ending in `.npz` is read with NumPy
instead of tensorflow-datasets: for a machine without TensorFlow (a GPU image with JAX
alone), or for images of your own. The file holds, for each split NAME,

    NAME_images  (N, 28, 28, 1) or (N, 28, 28), uint8 in 0..255 or floats in [0, 1]
    NAME_labels  (N,) integers

and a split is selected as in tfds: `test`, `test[:1000]`, `train[10%:]` (not tfds'
`train+test`, whose order is tfds' own: store such a union as a split of its own).
`vae-jax-export-data` writes such a file from a tfds dataset; the images read back are
the same float32 values that tfds gives, so a run trains the same either way.
"""

from __future__ import annotations

import math
import os
import re
import zipfile

import numpy as np

from vae_jax.model.vae import IMAGE_SIZE
from vae_jax.runtime.errors import DatasetError

SUFFIX = ".npz"
NPY_MAGIC = b"\x93NUMPY"  # how a single array's .npy file starts
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)  # damaged or not a .npz
PARTIAL_PREFIX = ".partial-"  # + the writer's PID + "-" + the file's name, while it is written
_SPLIT = re.compile(r"(?P<name>[A-Za-z_][\w.-]*)"
                   r"(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?")


def is_arrays_file(dataset: str) -> bool:
    """Whether `dataset` names an arrays file (a path ending in .npz), not a tfds dataset."""
    return dataset.lower().endswith(SUFFIX)


def load_split(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28, 1) float32 in [0, 1] and labels (N,) int32 of `split` in the
    arrays file `path`. Raises DatasetError with one line naming the file and what is
    wrong (missing, unreadable, no such split, a bad slice, images of another shape or
    range, labels that do not match)."""
    match = _SPLIT.fullmatch(split)
    if not match:
        raise DatasetError(f"split {split!r} of {path}: cannot parse it (write e.g. 'test', "
                           "'test[:1000]' or 'train[:10%]'; a union like 'train+test' is "
                           "not read from an arrays file)")
    images, labels = _read_split(path, match["name"])
    chosen = slice(*(_boundary(match[end], len(images), split, path)
                     for end in ("start", "stop")))
    images, labels = images[chosen], labels[chosen]
    if not len(images):
        raise DatasetError(f"split {split!r} of {path} selects no images")
    return images, labels


def save(path: str, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Writes `{name: (images, labels)}` to the arrays file `path`, images as uint8 (from
    floats in [0, 1] that are multiples of 1/255, as tfds gives, or uint8), labels int32.
    The file appears whole or not at all: an existing one is replaced only at the end."""
    contents = {}
    for name, (images, labels) in splits.items():
        contents[f"{name}_images"] = _to_uint8(np.asarray(images), name)
        contents[f"{name}_labels"] = np.asarray(labels).astype(np.int32)
    directory, name = os.path.split(os.path.abspath(path))
    remove_stale_partials(directory, name)
    partial = os.path.join(directory, f"{PARTIAL_PREFIX}{os.getpid()}-{name}")
    try:
        with open(partial, "wb") as file:  # the permissions a new file gets here (umask)
            np.savez_compressed(file, **contents)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise


def remove_stale_partials(directory: str, name: str) -> list[str]:
    """Deletes the half-written `.partial-PID-name` files in `directory` whose writer is no
    longer running (killed before it could clean up); returns their paths."""
    removed = []
    for entry in os.listdir(directory):
        pid = entry[len(PARTIAL_PREFIX):-len(name) - 1]
        if (entry.startswith(PARTIAL_PREFIX) and entry.endswith(f"-{name}") and pid.isdigit()
                and int(pid) != os.getpid() and not _process_alive(int(pid))):
            os.unlink(os.path.join(directory, entry))
            removed.append(os.path.join(directory, entry))
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process
        return True
    except (ProcessLookupError, OverflowError):  # gone, or beyond any process id
        return False
    return True


def _read_split(path: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole split `name` of the file: images as float32 (N, 28, 28, 1), labels as
    int32 (only its two arrays are read)."""
    if os.path.isdir(path):
        raise DatasetError(f"arrays file {path} is a folder, not a file")
    if not os.path.isfile(path):
        raise DatasetError(f"arrays file {path} does not exist")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as file:
            if file.read(len(NPY_MAGIC)) == NPY_MAGIC:
                raise DatasetError(f"arrays file {path} holds one array; it needs named "
                                   "arrays NAME_images and NAME_labels (numpy.savez)")
        raise DatasetError(f"cannot read arrays file {path}: it is not an .npz archive "
                           "(numpy.savez writes one)")
    keys = (f"{name}_images", f"{name}_labels")
    try:
        file = np.load(path, allow_pickle=False)
    except _READ_ERRORS as error:
        raise _unreadable(path, error) from None
    if not isinstance(file, np.lib.npyio.NpzFile):
        raise DatasetError(f"arrays file {path} holds one array; it needs named arrays "
                           "NAME_images and NAME_labels (numpy.savez)")
    with file:
        if keys[0] not in file.files:
            splits = sorted(key[:-len("_images")] for key in file.files
                            if key.endswith("_images"))
            raise DatasetError(f"split {name!r} is not in {path}: it has "
                               f"{', '.join(splits) or 'no NAME_images arrays'}")
        if keys[1] not in file.files:
            raise DatasetError(f"split {name!r} of {path} has images but no {keys[1]} array")
        for key in keys:
            _check_stored_size(file.zip, path, key)
        try:
            images, labels = (file[key] for key in keys)
        except _READ_ERRORS as error:
            raise _unreadable(path, error) from None
    images = _check_images(images, name, path)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{name}_labels in {path} must be {len(images)} integers, one "
                           f"per image; it is {labels.dtype} of shape {labels.shape}")
    return images, labels.astype(np.int32)


def _check_stored_size(archive: zipfile.ZipFile, path: str, key: str) -> None:
    """Refuses an array of `archive` (the open .npz file at `path`) whose header claims more
    (or fewer) bytes than the archive stores for it, before numpy allocates them."""
    try:
        with archive.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(member)
            stored = archive.getinfo(f"{key}.npy").file_size - member.tell()
    except (*_READ_ERRORS, KeyError) as error:
        raise _unreadable(path, error) from None
    claimed = math.prod(shape) * dtype.itemsize
    if claimed != stored:
        raise DatasetError(f"cannot read arrays file {path}: {key} claims shape {shape} of "
                           f"{dtype} ({claimed:,} bytes), but the file stores {stored:,}")


def _unreadable(path: str, error: Exception) -> DatasetError:
    return DatasetError(f"cannot read arrays file {path}: {type(error).__name__}: "
                        f"{' '.join(str(error).split())[:200]}")


def _boundary(text: str | None, count: int, split: str, path: str) -> int | None:
    """A slice end: an index, or a percentage of `count` rounded to the closest, within the
    split as tfds requires (a percentage from -100 to 100, an index up to `count`)."""
    if text is None:
        return None
    if text.endswith("%"):
        percent = int(text[:-1])
        if abs(percent) > 100:
            raise DatasetError(f"split {split!r} of {path}: {text} is not a share of the "
                               f"split; percentages go from -100% to 100%")
        return int(round(percent * count / 100.0))
    if abs(int(text)) > count:
        raise DatasetError(f"split {split!r} of {path}: {text} is beyond the split's "
                           f"{count:,} images")
    return int(text)


def _check_images(images: np.ndarray, name: str, path: str) -> np.ndarray:
    """`images` as float32 (N, 28, 28, 1) in [0, 1], or DatasetError."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1):
        raise DatasetError(f"{name}_images in {path} has shape {images.shape}; the course "
                           f"model needs (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 1) grayscale images")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise DatasetError(f"{name}_images in {path} is {images.dtype}; give uint8 pixels "
                           "(0 to 255) or floats in [0, 1]")
    images = images.astype(np.float32)
    if images.size and not (np.isfinite(images).all() and images.min() >= 0.0
                            and images.max() <= 1.0):
        raise DatasetError(f"{name}_images in {path} has values outside [0, 1]")
    return images


def _to_uint8(images: np.ndarray, name: str) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    pixels = np.rint(images.astype(np.float64) * 255.0)
    if not (np.all(pixels >= 0) and np.all(pixels <= 255)
            and np.array_equal((pixels.astype(np.float32) / 255.0), images.astype(np.float32))):
        raise ValueError(f"the {name} images are not 8-bit pixel values scaled to [0, 1]")
    return pixels.astype(np.uint8)
