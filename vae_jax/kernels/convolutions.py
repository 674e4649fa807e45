"""Which kernel computes a convolution: the implementations, and the choice among them.

A PyTorch-style convolution (padding 0, NHWC, kernel HWIO) or transposed convolution is
computed by one of three implementations, with the same values and gradients within float32
rounding (tests/test_layers.py; on a GPU, where JAX's default precision multiplies in TF32,
within about 5e-3):

* `"xla"`: XLA's own convolutions (`lax.conv_general_dilated`, `lax.conv_transpose`) and
  their automatic derivatives;
* `"matmul"`: one matrix multiply per pass plus index shuffling, with a hand-written
  backward pass (`vae_jax.kernels.im2col`);
* `"winograd"`: `"matmul"`, except that a stride-1 transposed convolution of a small input
  (the course's deconv2: 3x3 -> 6x6, kernel 4) runs Winograd's minimal algorithm
  (`vae_jax.kernels.winograd`).

XLA:CPU runs transposed and backward convolutions very slowly, which is why `"matmul"`
exists; `vae-jax-bench --implementation all` measures each. The default `"auto"` takes
`"winograd"` on CPU (the fastest there), `"matmul"` on GPU (on an H100 3.5x faster than XLA's
convolutions, in a fifteenth of the memory; `"winograd"` has not been measured there) and
`"xla"` on TPU, where none has been measured.
"""

from __future__ import annotations

from typing import Literal, get_args

import jax
from jax import lax

from vae_jax.kernels import im2col, winograd

Implementation = Literal["auto", "xla", "matmul", "winograd"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(Implementation)


# What "auto" takes on each backend (docs/guides/performance.md); "winograd" is measured on CPU
# only, and nothing on TPU.
AUTO_IMPLEMENTATIONS = {"cpu": "winograd", "gpu": "matmul", "tpu": "xla"}


def resolve_implementation(implementation: Implementation) -> str:
    """`"auto"` becomes the fastest measured on this backend: `"winograd"` on CPU, `"matmul"`
    on GPU, `"xla"` on TPU (not measured)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        return AUTO_IMPLEMENTATIONS.get(jax.default_backend(), "matmul")
    return implementation


def conv_transpose_xla(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The same as `conv_transpose_matmul`, through `lax.conv_transpose`.

    `lax.conv_transpose` without `transpose_kernel` correlates the dilated input with the
    kernel, so PyTorch's scatter semantics need the kernel flipped spatially.
    """
    return lax.conv_transpose(
        x, kernel[::-1, ::-1], (stride, stride), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_xla(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The same as `conv_matmul`, through `lax.conv_general_dilated`."""
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv(x: jax.Array, kernel: jax.Array, stride: int, implementation: Implementation
         ) -> jax.Array:
    """PyTorch's Conv2d without bias: (B, H, W, Cin), (kH, kW, Cin, Cout) ->
    (B, (H - kH) // stride + 1, ..., Cout). "winograd" has nothing for ordinary
    convolutions: they take "matmul"."""
    if resolve_implementation(implementation) == "xla":
        return conv_xla(x, kernel, stride)
    return im2col.conv_matmul(x, kernel, stride)


def conv_transpose(x: jax.Array, kernel: jax.Array, stride: int,
                   implementation: Implementation) -> jax.Array:
    """PyTorch's ConvTranspose2d without bias: (B, H, W, Cin), (kH, kW, Cin, Cout) ->
    (B, (H - 1) * stride + kH, ..., Cout)."""
    implementation = resolve_implementation(implementation)
    if implementation == "winograd" and winograd.applies(x.shape[1:3], kernel.shape[:2],
                                                         stride):
        return winograd.conv_transpose(x, kernel)
    if implementation == "xla":
        return conv_transpose_xla(x, kernel, stride)
    return im2col.conv_transpose_matmul(x, kernel, stride)
