"""Choosing the JAX backend (cpu, gpu, tpu) before any computation runs."""

from __future__ import annotations

import os
from typing import Callable

import jax

from vae_jax.runtime.errors import InputError

PLATFORMS = ("auto", "cpu", "gpu", "tpu")
# What `jax_platforms` is set to. None for "gpu": JAX then starts whichever GPU plugin is
# installed (naming "cuda,rocm" fails where only one of the two is) and we check it did.
_JAX_PLATFORM_NAMES = {"cpu": "cpu", "gpu": None, "tpu": "tpu"}
INSTALL_HINTS = {
    "gpu": "install JAX with CUDA: pip install 'vae-jax[cuda]' (or pip install -U 'jax[cuda12]')",
    "tpu": "install JAX for TPU: pip install -U 'jax[tpu]' on a Cloud TPU VM",
}


class PlatformError(InputError):
    """The requested platform has no usable device."""


def select_platform(platform: str, before_start: Callable[[], object] | None = None) -> str:
    """Restricts JAX to `platform` and returns the backend in use ("cpu", "gpu" or "tpu").

    For "gpu", JAX starts whichever GPU plugin is installed, and the backend it chose must be
    the GPU.

    Must run before the first JAX computation; `before_start()` runs after the restriction
    and before JAX starts its backends (where `jax.distributed.initialize` belongs). Raises
    PlatformError when the platform has no usable device, with a one-line message that says
    how to get one.
    """
    if platform not in PLATFORMS:
        raise PlatformError(f"unknown platform {platform!r}; choose one of {PLATFORMS}")
    if platform != "auto":
        jax.config.update("jax_platforms", _JAX_PLATFORM_NAMES[platform])
    if before_start is not None:
        before_start()
    try:
        backend = jax.default_backend()
    except RuntimeError as error:
        if platform == "auto":
            raise PlatformError(f"JAX could not start: {str(error).splitlines()[0]}") from None
        backend = None
    if platform not in ("auto", backend):
        raise PlatformError(
            f"--platform {platform}: no usable {platform.upper()} found by JAX; "
            f"{INSTALL_HINTS[platform]}")
    return backend


def memory_bytes() -> int | None:
    """The memory of JAX's first device: a GPU/TPU's own (`bytes_limit`), else the host's
    physical memory; None where neither is known."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        try:
            limit = (device.memory_stats() or {}).get("bytes_limit")
        except Exception:  # noqa: BLE001 - backends without memory statistics
            limit = None
        if limit:
            return int(limit)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return None
