"""Importing the course notebook's trained PyTorch VAE (and exporting back to its layout).

The course's `VAE` (DeepLearning.AI GANs course 2, week 2) has a state_dict with keys like
`encode.disc.0.0.weight` and `decode.gen.3.0.bias`; `from_torch_state_dict` turns it into the
`{"params", "batch_stats"}` variables of `vae_jax.VAE` (the module mapping is `LAYERS`)::

    encode.disc.0.0 Conv2d -> encoder/conv1     decode.gen.0.0 ConvTranspose2d -> decoder/deconv1
    encode.disc.0.1 BN     -> encoder/bn1       decode.gen.0.1 BN              -> decoder/bn1
    encode.disc.1.0 Conv2d -> encoder/conv2     decode.gen.1.0 ConvTranspose2d -> decoder/deconv2
    encode.disc.1.1 BN     -> encoder/bn2       decode.gen.1.1 BN              -> decoder/bn2
    encode.disc.2.0 Conv2d -> encoder/conv3     decode.gen.2.0 ConvTranspose2d -> decoder/deconv3
                                                decode.gen.2.1 BN              -> decoder/bn3
                                                decode.gen.3.0 ConvTranspose2d -> decoder/deconv4

Conv2d weight (out, in, kH, kW) -> HWIO `kernel` by `transpose(2, 3, 1, 0)`;
ConvTranspose2d weight (in, out, kH, kW) -> HWIO `kernel` by `transpose(2, 3, 0, 1)`, with no
spatial flip, because `vae_jax.model.layers.ConvTranspose2d` has PyTorch's scatter semantics;
BatchNorm2d weight/bias -> params `scale`/`bias`, running_mean/running_var -> batch_stats
`mean`/`var`; `num_batches_tracked` is ignored.

torch is not needed to import this module or to convert a state dict of numpy arrays; only
`read_state_dict`, which reads a `.pt` file written by `torch.save(vae.state_dict(), ...)`
(or a dict holding it under `state_dict`, `model_state_dict`, `model`, ...) with
`torch.load(..., weights_only=True)`, imports it. `vae-jax-torch-port MODEL.pt --workdir DIR`
converts a file and saves the variables (`vae_jax.save_variables`). Parity with the
original, output for output, is tested in tests/test_torch_port.py.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from vae_jax.model.vae import VAE, variable_shapes
from vae_jax.runtime.errors import InputError, first_line

# (PyTorch module prefix, vae-jax module path, kind)
LAYERS: tuple[tuple[str, tuple[str, str], str], ...] = (
    ("encode.disc.0.0", ("encoder", "conv1"), "conv"),
    ("encode.disc.0.1", ("encoder", "bn1"), "bn"),
    ("encode.disc.1.0", ("encoder", "conv2"), "conv"),
    ("encode.disc.1.1", ("encoder", "bn2"), "bn"),
    ("encode.disc.2.0", ("encoder", "conv3"), "conv"),
    ("decode.gen.0.0", ("decoder", "deconv1"), "deconv"),
    ("decode.gen.0.1", ("decoder", "bn1"), "bn"),
    ("decode.gen.1.0", ("decoder", "deconv2"), "deconv"),
    ("decode.gen.1.1", ("decoder", "bn2"), "bn"),
    ("decode.gen.2.0", ("decoder", "deconv3"), "deconv"),
    ("decode.gen.2.1", ("decoder", "bn3"), "bn"),
    ("decode.gen.3.0", ("decoder", "deconv4"), "deconv"),
)

# Torch weight (4-D) -> HWIO kernel, per layer kind; the inverse permutations export.
_KERNEL_PERM = {"conv": (2, 3, 1, 0), "deconv": (2, 3, 0, 1)}
_KERNEL_PERM_BACK = {"conv": (3, 2, 0, 1), "deconv": (2, 3, 0, 1)}

# (torch suffix, vae-jax collection, vae-jax name) per layer kind.
_ENTRIES = {
    "conv": (("weight", "params", "kernel"), ("bias", "params", "bias")),
    "deconv": (("weight", "params", "kernel"), ("bias", "params", "bias")),
    "bn": (("weight", "params", "scale"), ("bias", "params", "bias"),
           ("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var")),
}

_IGNORED_SUFFIXES = ("num_batches_tracked",)
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "vae", "net")


def to_numpy(value: Any, key: str) -> np.ndarray:
    """numpy array from a numpy/JAX array or a torch tensor (duck-typed: torch not
    imported); raises StateDictError naming `key` for anything else."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    if isinstance(value, (Mapping, str, bytes)) or value is None:
        raise StateDictError(f"{key!r} is not a tensor (got {type(value).__name__})")
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise StateDictError(f"{key!r} is not a tensor of numbers (got "
                             f"{type(value).__name__}: {' '.join(str(error).split())[:100]})"
                             ) from None


class StateDictError(InputError):
    """A state dict that is not the course VAE's: a missing or unexpected key, a wrong shape."""


def _expected_shapes(z_dim: int, im_chan: int) -> dict[str, dict]:
    """Shapes of `vae_jax.VAE(z_dim, im_chan)`'s variables (no compute)."""
    model = VAE(z_dim=z_dim, im_chan=im_chan, implementation="xla")
    return jax.tree.map(lambda leaf: tuple(leaf.shape), variable_shapes(model))


def torch_shape(kind: str, suffix: str, jax_shape: tuple) -> tuple:
    """The PyTorch shape of the entry that maps to a vae-jax variable of `jax_shape`."""
    if suffix == "weight" and kind in _KERNEL_PERM:
        return tuple(jax_shape[i] for i in _KERNEL_PERM_BACK[kind])
    return tuple(jax_shape)


def infer_z_dim(state_dict: Mapping[str, Any]) -> int:
    """z_dim of a course state dict: the decoder's first ConvTranspose2d has z_dim inputs."""
    key = "decode.gen.0.0.weight"
    if key not in state_dict:
        raise StateDictError(f"missing key {key!r}: not a state dict of the course's VAE")
    shape = np.shape(to_numpy(state_dict[key], key))
    if len(shape) != 4:
        raise StateDictError(f"wrong shape for {key!r}: a ConvTranspose2d weight has 4 axes, "
                             f"got {shape}")
    return int(shape[0])


def from_torch_state_dict(state_dict: Mapping[str, Any], *, z_dim: int | None = None,
                          im_chan: int = 1) -> dict[str, dict]:
    """The course VAE's PyTorch state_dict -> `{"params", "batch_stats"}` for `vae_jax.VAE`.

    Values may be numpy arrays or torch tensors. `z_dim=None` infers it from the state dict;
    given, a state dict of another z_dim is refused. Raises ValueError, naming the key, on a
    missing key, an unexpected key or a wrong shape. Returns nested dicts of float32 numpy
    arrays, ready for `VAE(z_dim=..., im_chan=...).apply`.
    """
    if not isinstance(state_dict, Mapping):
        raise StateDictError(f"expected a state dict (a mapping of names to tensors), "
                         f"got {type(state_dict).__name__}")
    found_z_dim = infer_z_dim(state_dict)
    if z_dim is None:
        z_dim = found_z_dim
    elif found_z_dim != z_dim:
        raise StateDictError(f"state dict is for z_dim={found_z_dim} ('decode.gen.0.0.weight' has "
                         f"shape {np.shape(state_dict['decode.gen.0.0.weight'])}), "
                         f"but z_dim={z_dim} was requested")
    shapes = _expected_shapes(z_dim, im_chan)

    expected_keys = set()
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for prefix, (part, name), kind in LAYERS:
        for suffix, collection, leaf in _ENTRIES[kind]:
            key = f"{prefix}.{suffix}"
            expected_keys.add(key)
            jax_shape = shapes[collection][part][name][leaf]
            want = torch_shape(kind, suffix, jax_shape)
            if key not in state_dict:
                raise StateDictError(f"missing key {key!r} (expected shape {want})")
            value = to_numpy(state_dict[key], key)
            if value.shape != want:
                raise StateDictError(
                    f"wrong shape for {key!r}: expected {want} "
                    f"(VAE(z_dim={z_dim}, im_chan={im_chan})), got {value.shape}")
            if suffix == "weight" and kind in _KERNEL_PERM:
                value = value.transpose(_KERNEL_PERM[kind])
            variables[collection].setdefault(part, {}).setdefault(name, {})[leaf] = (
                np.ascontiguousarray(value))
    unexpected = sorted((k for k in state_dict if not isinstance(k, str) or (
        k not in expected_keys and not k.endswith(_IGNORED_SUFFIXES))), key=str)
    if unexpected:
        raise StateDictError(f"unexpected key {unexpected[0]!r}"
                         + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
                         + ": not a state dict of the course's VAE")
    return variables


def to_torch_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """`{"params", "batch_stats"}` of `vae_jax.VAE` -> the course's state_dict (numpy arrays).

    The inverse of `from_torch_state_dict`. `num_batches_tracked` is not written; PyTorch's
    BatchNorm fills it in, so `model.load_state_dict({k: torch.from_numpy(v) for k, v in
    to_torch_state_dict(variables).items()})` loads it into the course's `VAE()` (checked
    with torch 2.13).
    """
    state_dict = {}
    for prefix, (part, name), kind in LAYERS:
        for suffix, collection, leaf in _ENTRIES[kind]:
            value = np.asarray(variables[collection][part][name][leaf], dtype=np.float32)
            if suffix == "weight" and kind in _KERNEL_PERM_BACK:
                value = value.transpose(_KERNEL_PERM_BACK[kind])
            state_dict[f"{prefix}.{suffix}"] = np.ascontiguousarray(value)
    return state_dict


def unwrap_state_dict(loaded: Any) -> Mapping[str, Any]:
    """The state dict inside what `torch.load` returned: itself, or under a usual key."""
    if isinstance(loaded, Mapping):
        if any(isinstance(k, str) and k.startswith(("encode.", "decode.")) for k in loaded):
            return loaded
        for key in _WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                return unwrap_state_dict(loaded[key])
    if hasattr(loaded, "state_dict") and callable(loaded.state_dict):
        return loaded.state_dict()
    raise StateDictError("no course VAE state dict found (expected keys like "
                     "'encode.disc.0.0.weight', at the top level or under "
                     f"one of {list(_WRAPPER_KEYS)})")


def read_state_dict(path: str) -> Mapping[str, Any]:
    """The course VAE's state dict in the file `path` written by `torch.save`."""
    if not os.path.isfile(path):
        raise InputError(f"no such file: {path}")
    try:
        import torch  # only to read the file: converting needs no torch
    except ImportError:
        raise InputError("reading a .pt file needs PyTorch: pip install torch") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - one line for any unreadable file
        raise InputError(f"cannot load {path}: {type(error).__name__}: "
                         f"{first_line(error)}") from None
    try:
        return unwrap_state_dict(loaded)
    except ValueError as error:
        raise InputError(f"{path}: {error}") from None
