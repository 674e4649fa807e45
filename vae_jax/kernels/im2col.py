"""Convolutions as matrix multiplies ("matmul"), with hand-written backward passes.

A convolution gathers its input's patches ("im2col": one `gather`, or strided slices for
inputs with few channels) and multiplies them by the kernel; a transposed convolution
multiplies its input by the kernel into per-kernel-offset blocks and sums the blocks that
overlap each output pixel ("col2im": gathers of the at most ceil(k/s)^2 contributions per
pixel, or for stride > 1 in training, shifted slices per output phase, and a sum). Each
one's backward pass (`jax.custom_vjp`; so no forward-mode `jax.jvp` through them) is the
other's forward pass plus one matmul for the kernel gradient, so no pass ever runs a
convolution or a scatter, which XLA:CPU runs slowly.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _output_size(size: int, kernel: int, stride: int) -> int:
    return (size - 1) * stride + kernel


@functools.lru_cache(maxsize=None)
def _im2col_indices(height: int, width: int, kernel_h: int, kernel_w: int,
                    stride: int) -> np.ndarray:
    """Flat input positions `row * width + col` of every (out_h, out_w, kh, kw) patch entry."""
    out_h = (height - kernel_h) // stride + 1
    out_w = (width - kernel_w) // stride + 1
    rows = stride * np.arange(out_h)[:, None, None, None] + np.arange(kernel_h)[:, None]
    cols = stride * np.arange(out_w)[:, None, None] + np.arange(kernel_w)
    return (rows * width + cols).astype(np.int32).reshape(-1)


# Below this many channels, im2col stacks kH*kW strided slices instead of gathering: XLA
# puts a gather's indexed axis first and then transposes the result to (B, ..., C), which
# costs more than the slices when each gathered row is only a few floats long.
_MIN_CHANNELS_TO_GATHER = 8


def _im2col(x: jax.Array, kernel_h: int, kernel_w: int, stride: int) -> jax.Array:
    """Patches of a VALID convolution: (B, H, W, C) -> (B, Ho, Wo, kH, kW, C).

    `patches[b, i, j, p, q] = x[b, stride*i + p, stride*j + q]`, Ho = (H - kH) // stride + 1:
    one gather of the flattened positions, or strided slices for few channels.
    """
    x = jnp.asarray(x)
    batch, height, width, channels = x.shape
    out_h = (height - kernel_h) // stride + 1
    out_w = (width - kernel_w) // stride + 1
    if channels < _MIN_CHANNELS_TO_GATHER:
        patches = jnp.stack(
            [x[:, p:p + stride * (out_h - 1) + 1:stride, q:q + stride * (out_w - 1) + 1:stride]
             for p in range(kernel_h) for q in range(kernel_w)], axis=3)
        return patches.reshape(batch, out_h, out_w, kernel_h, kernel_w, channels)
    index = _im2col_indices(height, width, kernel_h, kernel_w, stride)
    patches = x.reshape(batch, height * width, channels).at[:, index].get(
        mode="promise_in_bounds")
    return patches.reshape(batch, out_h, out_w, kernel_h, kernel_w, channels)


def _contributors(size: int, kernel: int, stride: int) -> list[list[tuple[int, int]]]:
    """For each output position o of a 1-D transposed convolution, the (i, p) with s*i+p = o."""
    found = [[] for _ in range(_output_size(size, kernel, stride))]
    for i in range(size):
        for p in range(kernel):
            found[stride * i + p].append((i, p))
    return found


@functools.lru_cache(maxsize=None)
def _col2im_indices(height: int, width: int, kernel_h: int, kernel_w: int,
                    stride: int) -> tuple[np.ndarray, int]:
    """Per output pixel, the flat (i, j, p, q) block entries that land on it, and their count.

    Returns (index, per_pixel): index has Ho*Wo*per_pixel entries, `per_pixel` for each output
    pixel in row-major order. Unused slots hold H*W*kH*kW, one past the last entry, which
    the gather reads as 0 (-1 would wrap around to the last entry).
    """
    rows = _contributors(height, kernel_h, stride)
    cols = _contributors(width, kernel_w, stride)
    max_rows, max_cols = max(map(len, rows)), max(map(len, cols))
    unused = height * width * kernel_h * kernel_w
    index = np.full((len(rows), len(cols), max_rows, max_cols), unused, np.int64)
    for out_i, row_entries in enumerate(rows):
        for out_j, col_entries in enumerate(cols):
            for a, (i, p) in enumerate(row_entries):
                for b, (j, q) in enumerate(col_entries):
                    index[out_i, out_j, a, b] = ((i * width + j) * kernel_h + p) * kernel_w + q
    return index.astype(np.int32).reshape(-1), max_rows * max_cols


def _col2im(blocks: jax.Array, stride: int, one_pass: bool = False) -> jax.Array:
    """Sums kernel-offset blocks into the transposed-convolution output ("col2im").

    blocks: (B, H, W, kH, kW, C), the contribution of input pixel (i, j) at kernel offset
    (p, q). Returns (B, (H-1)*stride+kH, (W-1)*stride+kW, C) with
    `out[b, stride*i+p, stride*j+q] += blocks[b, i, j, p, q]`. Three ways, all the same sums:

    * `one_pass` (evaluation): one gather per contribution slot (at most
      ceil(kH/stride) * ceil(kW/stride) land on each output pixel), summed, which XLA fuses
      into one pass that writes only the output (the IWAE decoder runs 1.3x faster so).
    * stride > 1 (training): by phases, `_col2im_by_phase`, slices and adds instead of a
      gather.
    * stride 1 (training): one gather of every slot, then a sum.

    Training avoids the one-pass gathers: the output also feeds a transposing copy (for the
    next layer's kernel gradient), and XLA would fuse them into that copy and make it 20x
    slower (docs/guides/performance.md).
    """
    blocks = jnp.asarray(blocks)
    batch, height, width, kernel_h, kernel_w, channels = blocks.shape
    out_h = _output_size(height, kernel_h, stride)
    out_w = _output_size(width, kernel_w, stride)
    if height == 1 and width == 1:  # the blocks do not overlap: they are the output
        return blocks.reshape(batch, kernel_h, kernel_w, channels)
    if stride > 1 and not one_pass:
        return _col2im_by_phase(blocks, stride)
    index, per_pixel = _col2im_indices(height, width, kernel_h, kernel_w, stride)
    flat = blocks.reshape(batch, height * width * kernel_h * kernel_w, channels)
    if one_pass:
        slots = index.reshape(out_h * out_w, per_pixel).T
        out = sum(flat.at[:, slot].get(mode="fill", fill_value=0) for slot in slots)
        return out.reshape(batch, out_h, out_w, channels)
    gathered = flat.at[:, index].get(mode="fill", fill_value=0)
    return gathered.reshape(batch, out_h, out_w, per_pixel, channels).sum(axis=3)


def _col2im_by_phase(blocks: jax.Array, stride: int) -> jax.Array:
    """`_col2im` for stride > 1 as `stride`**2 stride-1 sums ("phases"), interleaved.

    The output pixels (stride*m + r, stride*n + t) of one phase (r, t) receive exactly the
    kernel offsets p = r, r + stride, ... and q = t, t + stride, ..., offset p from input
    row m - p // stride: each phase is a sum of a few zero-padded, shifted slices of
    `blocks`, and one stack and reshape interleave the phases. XLA fuses this into a pass
    over the output; the training step ran 7% faster than with the gather
    (docs/guides/performance.md).
    """
    batch, height, width, kernel_h, kernel_w, channels = blocks.shape
    out_h = _output_size(height, kernel_h, stride)
    out_w = _output_size(width, kernel_w, stride)
    # Rows and columns of every phase, padded to the longest (the first).
    phase_h, phase_w = -(-out_h // stride), -(-out_w // stride)

    def phase(r: int, t: int) -> jax.Array:  # (B, phase_h, phase_w, C)
        total = jnp.zeros((batch, phase_h, phase_w, channels), blocks.dtype)
        for p in range(r, kernel_h, stride):
            for q in range(t, kernel_w, stride):
                shift_h, shift_w = p // stride, q // stride
                total = total + jnp.pad(blocks[:, :, :, p, q], [
                    (0, 0), (shift_h, phase_h - height - shift_h),
                    (shift_w, phase_w - width - shift_w), (0, 0)])
        return total

    phases = jnp.stack([jnp.stack([phase(r, t) for t in range(stride)], axis=3)
                        for r in range(stride)], axis=2)  # (B, phase_h, r, phase_w, t, C)
    out = phases.reshape(batch, phase_h * stride, phase_w * stride, channels)
    return out[:, :out_h, :out_w]


def _sum_over_positions(a: jax.Array, b: jax.Array) -> jax.Array:
    """sum over (n, i, j) of the outer products a[n, i, j] x b[n, i, j]: a.shape[3:] + b.shape[3:].

    The kernel gradients, as one (A, N) @ (N, B') matmul over the N = n*i*j positions. Both
    operands come with N leading (major); the smaller one is transposed explicitly first, so
    the multiply is a plain one that XLA:CPU hands to YNNPACK (and runs together with the
    input gradient's multiply, which reads the same patches). Left to XLA, the transposed
    operand went to a slower kernel: the step took 5-8% longer (docs/guides/performance.md).
    """
    positions = math.prod(a.shape[:3])
    a_rest, b_rest = a.shape[3:], b.shape[3:]
    if math.prod(a_rest) > math.prod(b_rest):
        swapped = _sum_over_positions(b, a)  # b_rest + a_rest
        return swapped.transpose(tuple(range(len(b_rest), swapped.ndim))
                                 + tuple(range(len(b_rest))))
    a_transposed = a.reshape(positions, -1).T  # (A, N)
    product = lax.dot_general(a_transposed, b.reshape(positions, -1), (((1,), (0,)), ((), ())))
    return product.reshape(a_rest + b_rest)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_transpose_matmul(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """PyTorch ConvTranspose2d (padding 0, no bias) as one matmul plus col2im.

    x: (B, H, W, Cin); kernel: (kH, kW, Cin, Cout). Returns (B, Ho, Wo, Cout), with
    Ho = (H-1)*stride + kH. Forward: `blocks = x @ kernel` over Cin, (B, H, W, kH, kW, Cout),
    then `_col2im`. Backward (a custom VJP, the adjoint pair): `patches = _im2col(dy)`,
    dx = patches @ kernel over (kH, kW, Cout), dkernel = x^T @ patches over (B, H, W).
    """
    # Not differentiated here (jax.grad runs `_conv_transpose_matmul_fwd` instead): the
    # forward-only col2im.
    return _col2im(_blocks(x, kernel), stride, one_pass=True)


def _blocks(x, kernel):
    """x @ kernel over Cin: (B, H, W, Cin), (kH, kW, Cin, Cout) -> (B, H, W, kH, kW, Cout)."""
    return lax.dot_general(x, kernel, (((3,), (2,)), ((), ())))


def _conv_transpose_matmul_fwd(x, kernel, stride):
    return _col2im(_blocks(x, kernel), stride), (x, kernel)


def _conv_transpose_matmul_bwd(stride, residuals, dy):
    x, kernel = residuals
    kernel_h, kernel_w = kernel.shape[:2]
    patches = _im2col(dy, kernel_h, kernel_w, stride)  # (B, H, W, kH, kW, Cout)
    dx = lax.dot_general(patches, kernel, (((3, 4, 5), (0, 1, 3)), ((), ())))
    dkernel = _sum_over_positions(x, patches).transpose(1, 2, 0, 3)  # (kH, kW, Cin, Cout)
    return dx, dkernel


conv_transpose_matmul.defvjp(_conv_transpose_matmul_fwd, _conv_transpose_matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_matmul(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """PyTorch Conv2d (padding 0, no bias) as patches ("im2col") and one matmul.

    x: (B, H, W, Cin); kernel: (kH, kW, Cin, Cout). Returns (B, Ho, Wo, Cout), with
    Ho = (H - kH) // stride + 1. Backward (a custom VJP): dkernel = patches^T @ dy,
    dx = `_col2im(dy @ kernel^T)`, zero-padded where the last rows and columns were unused.
    """
    return _conv_matmul_fwd(x, kernel, stride)[0]


def _conv_matmul_fwd(x, kernel, stride):
    kernel_h, kernel_w = kernel.shape[:2]
    patches = _im2col(x, kernel_h, kernel_w, stride)  # (B, Ho, Wo, kH, kW, Cin)
    y = lax.dot_general(patches, kernel, (((3, 4, 5), (0, 1, 2)), ((), ())))
    return y, (x, kernel)


def _conv_matmul_bwd(stride, residuals, dy):
    x, kernel = residuals
    kernel_h, kernel_w = kernel.shape[:2]
    patches = _im2col(x, kernel_h, kernel_w, stride)
    dkernel = _sum_over_positions(patches, dy)  # (kH, kW, Cin, Cout)
    dblocks = lax.dot_general(dy, kernel, (((3,), (3,)), ((), ())))  # (B, Ho, Wo, kH, kW, Cin)
    dx = _col2im(dblocks, stride)
    height, width = x.shape[1:3]
    dx = jnp.pad(dx, [(0, 0), (0, height - dx.shape[1]), (0, width - dx.shape[2]), (0, 0)])
    return dx, dkernel


conv_matmul.defvjp(_conv_matmul_fwd, _conv_matmul_bwd)
