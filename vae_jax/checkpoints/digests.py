"""SHA-256 digests of a tree's arrays, written with a checkpoint and checked when it is read.

orbax does not checksum what it stores: a flipped bit inside a checkpoint's array data
restores as a slightly different weight whenever the compressed stream still decodes. So
every checkpoint also holds the digest of each of its arrays (dtype, shape and bytes), and
a restored tree whose digests differ is treated like any unreadable checkpoint.
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np


class DigestMismatch(ValueError):
    """A restored array is not the one that was saved."""


class MissingDigests(DigestMismatch):
    """Arrays saved with digests came back without their digest record."""


class NonFiniteArray(ValueError):
    """A restored array holds NaN or infinity, which no run ever saves."""


def require_finite(tree, what: str) -> None:
    """Raises NonFiniteArray naming the first floating-point array of `tree` (named
    `what`) that holds NaN or infinity."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        array = _host_array(leaf)
        if np.issubdtype(array.dtype, np.inexact) and not np.all(np.isfinite(array)):
            raise NonFiniteArray(f"{what} {_path_name(path)} holds NaN or infinity")


def _path_name(path) -> str:
    """A tree path as "params/encoder/conv1/kernel", the same for dicts, named tuples and
    lists, so a tree restored with or without a target has the same names."""
    parts = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                parts.append(str(getattr(entry, attribute)))
                break
    return "/".join(parts)


def _host_array(leaf) -> np.ndarray:
    """The array's values on this host (a replicated array's first local copy)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = leaf.addressable_data(0)
    return np.asarray(leaf)


def array_digest(array) -> str:
    """SHA-256 of an array's dtype, shape and bytes, as hex."""
    array = _host_array(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).view(np.uint8))
    return digest.hexdigest()


def tree_digests(tree) -> dict[str, str]:
    """{path: digest} for every array in `tree`."""
    return {_path_name(path): array_digest(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def verify(tree, expected: dict[str, str], what: str) -> None:
    """Raises DigestMismatch naming the first array of `tree` (named `what`) whose digest
    is not the `expected` one, or an array that is missing or extra."""
    found = tree_digests(tree)
    for name in sorted(set(found) | set(expected)):
        if found.get(name) != expected.get(name):
            problem = ("is missing" if name not in found else "was not saved"
                       if name not in expected else "does not match its digest")
            raise DigestMismatch(f"{what} {name} {problem}")
