"""Choosing the JAX backend (cpu, gpu, tpu) before any computation runs."""

from __future__ import annotations

import jax

from vae_jax.errors import InputError

PLATFORMS = ("auto", "cpu", "gpu", "tpu")
_JAX_PLATFORM_NAMES = {"cpu": "cpu", "gpu": "cuda,rocm", "tpu": "tpu"}
INSTALL_HINTS = {
    "gpu": "install JAX with CUDA: pip install 'vae-jax[cuda]' (or pip install -U 'jax[cuda12]')",
    "tpu": "install JAX for TPU: pip install -U 'jax[tpu]' on a Cloud TPU VM",
}


class PlatformError(InputError):
    """The requested platform has no usable device."""


def select_platform(platform: str) -> str:
    """Restricts JAX to `platform` and returns the backend in use ("cpu", "gpu" or "tpu").

    Must run before the first JAX computation. Raises PlatformError when the platform has
    no usable device, with a one-line message that says how to get one.
    """
    if platform not in PLATFORMS:
        raise PlatformError(f"unknown platform {platform!r}; choose one of {PLATFORMS}")
    if platform != "auto":
        jax.config.update("jax_platforms", _JAX_PLATFORM_NAMES[platform])
    try:
        backend = jax.default_backend()
    except RuntimeError:
        raise PlatformError(
            f"--platform {platform}: no usable {platform.upper()} found by JAX; "
            f"{INSTALL_HINTS[platform]}") from None
    return backend
