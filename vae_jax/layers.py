"""Layers with PyTorch semantics: Conv2d, ConvTranspose2d and BatchNorm.

They match `torch.nn.Conv2d`, `torch.nn.ConvTranspose2d` and `torch.nn.BatchNorm2d` with
padding 0, in NHWC layout:

* kernels are stored HWIO, `kernel[kh, kw, in, out]`; a PyTorch Conv2d weight (out, in, kH, kW)
  maps to it by `permute(2, 3, 1, 0)`, a ConvTranspose2d weight (in, out, kH, kW) by
  `permute(2, 3, 0, 1)`. The transposed convolution is the gradient of a convolution (each
  input pixel scatters `x[i, j] * kernel` into the output at `(stride*i, stride*j)`); no
  kernel flip is needed when importing PyTorch weights.
* initialisation follows PyTorch's defaults: weights and biases uniform in
  ±1/sqrt(fan_in), where fan_in is in·kH·kW for Conv2d and, as PyTorch computes it from the
  weight's second axis, out·kH·kW for ConvTranspose2d.
* BatchNorm normalises with the biased batch variance and updates the running variance
  with the unbiased one, as PyTorch does (Flax's `nn.BatchNorm` uses the biased one).

Three implementations compute the convolutions:

* `"xla"`: XLA's own convolutions (`lax.conv_general_dilated`, `lax.conv_transpose`) and
  their automatic derivatives.
* `"matmul"`: one matrix multiply per pass plus index shuffling, with a hand-written
  backward pass (`jax.custom_vjp`; so no forward-mode `jax.jvp` through these layers).
  A convolution gathers its input's patches ("im2col": one `gather`, or strided slices for
  inputs with few channels) and multiplies them by the kernel; a transposed convolution
  multiplies its input by the kernel into per-kernel-offset blocks and sums the blocks that
  overlap each output pixel ("col2im": gathers of the at most ceil(k/s)^2 contributions per
  pixel, or for stride > 1 in training, shifted slices per output phase, and a sum). Each
  one's backward pass is the other's forward pass plus one matmul for the kernel gradient,
  so no pass ever runs a convolution or a scatter.
* `"winograd"`: `"matmul"`, except that a stride-1 transposed convolution of a small input
  (the course's deconv2: 3x3 -> 6x6, kernel 4) runs Winograd's minimal algorithm
  (`vae_jax/winograd.py`), with 2.25 times fewer multiplies in its matmuls and the rounding
  of direct summation.

XLA:CPU runs transposed and backward convolutions very slowly, which is why `"matmul"`
exists; the README's Performance section has the measurements, and `python -m vae_jax.bench
--implementation all` repeats them. The default `"auto"` takes `"winograd"` on CPU (the
fastest there), `"matmul"` on GPU (on an H100 it was 3.5x faster than XLA's convolutions, in
a fifteenth of the memory; `"winograd"` has not been measured there) and `"xla"` on TPU,
where none has been measured. All give the same values and gradients within float32 rounding
(tests/test_layers.py); on a GPU, where JAX's default precision multiplies in TF32, within
about 5e-3.

BatchNorm's training mode also has a hand-written backward pass (`batch_norm_train`): two
reductions and one elementwise pass, about half the passes over the activations that XLA
makes of the automatically differentiated formula.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from vae_jax import winograd

Implementation = Literal["auto", "xla", "matmul", "winograd"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(Implementation)


def torch_uniform_init(fan_in: int):
    """PyTorch's default initialiser for conv weights and biases: U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# What "auto" takes on each backend (README, Performance); "winograd" is measured on CPU
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
    slower (README, Performance).
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
    over the output; the training step ran 7% faster than with the gather (README,
    Performance).
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
    operand went to a slower kernel: the step took 5-8% longer (README, Performance).
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


def conv_transpose_xla(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The same as `conv_transpose_matmul`, through `lax.conv_transpose`.

    `lax.conv_transpose` without `transpose_kernel` correlates the dilated input with the
    kernel, so PyTorch's scatter semantics need the kernel flipped spatially.
    """
    return lax.conv_transpose(
        x, kernel[::-1, ::-1], (stride, stride), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


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


def conv_xla(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The same as `conv_matmul`, through `lax.conv_general_dilated`."""
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Conv2d(nn.Module):
    """`torch.nn.Conv2d(in, features, kernel_size, stride, padding=0)` in NHWC.

    (B, H, W, Cin) -> (B, (H - kernel_size) // stride + 1, ..., features).
    """

    features: int
    kernel_size: int
    stride: int = 1
    implementation: Implementation = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        fan_in = in_features * self.kernel_size ** 2
        kernel = self.param(
            "kernel", torch_uniform_init(fan_in),
            (self.kernel_size, self.kernel_size, in_features, self.features))
        bias = self.param("bias", torch_uniform_init(fan_in), (self.features,))
        # "winograd" has nothing for ordinary convolutions: they take "matmul".
        conv = conv_xla if resolve_implementation(self.implementation) == "xla" else conv_matmul
        return conv(x, kernel, self.stride) + bias


class ConvTranspose2d(nn.Module):
    """`torch.nn.ConvTranspose2d(in, features, kernel_size, stride, padding=0)` in NHWC.

    (B, H, W, Cin) -> (B, (H-1)*stride + kernel_size, ..., features).
    """

    features: int
    kernel_size: int
    stride: int = 1
    implementation: Implementation = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        fan_in = self.features * self.kernel_size ** 2  # PyTorch's fan_in for this weight.
        kernel = self.param(
            "kernel", torch_uniform_init(fan_in),
            (self.kernel_size, self.kernel_size, in_features, self.features))
        bias = self.param("bias", torch_uniform_init(fan_in), (self.features,))
        implementation = resolve_implementation(self.implementation)
        if implementation == "winograd" and winograd.applies(x.shape[1:3], kernel.shape[:2],
                                                             self.stride):
            return winograd.conv_transpose(x, kernel) + bias
        if implementation == "xla":
            return conv_transpose_xla(x, kernel, self.stride) + bias
        return conv_transpose_matmul(x, kernel, self.stride) + bias


def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode batch normalisation over all axes but the last.

    Returns (y, mean, var): y = (x - mean) / sqrt(var + epsilon) * scale + bias with the
    batch mean and biased batch variance. The backward pass is written out (a custom VJP):
    two reductions, sum(dy) and sum(dy * xhat), and one elementwise pass, where automatic
    differentiation of the same formula gives XLA about twice as many passes over x.
    """
    return _batch_norm_train(x, scale, bias, epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_train(x, scale, bias, epsilon):
    return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    rstd = lax.rsqrt(var + epsilon)
    y = (x - mean) * (scale * rstd) + bias
    return (y, mean, var), (x, mean, rstd, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
    del epsilon
    x, mean, rstd, scale = residuals
    dy, dmean, dvar = cotangents
    axes = tuple(range(x.ndim - 1))
    count = math.prod(x.shape[:-1])
    centered = x - mean
    xhat = centered * rstd
    dbias = jnp.sum(dy, axis=axes)
    dscale = jnp.sum(dy * xhat, axis=axes)
    dx = (scale * rstd / count) * (count * dy - dbias - xhat * dscale)
    # mean and var are outputs too (for the running statistics); their cotangents are
    # usually zero, but are honoured: d mean/dx = 1/N, d var/dx = 2 (x - mean) / N.
    dx = dx + dmean / count + dvar * (2.0 / count) * centered
    return dx, dscale, dbias


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNorm(nn.Module):
    """`torch.nn.BatchNorm2d` over the last axis: batch statistics when `train`, else running ones.

    Variables: params `scale` (ones), `bias` (zeros); batch_stats `mean` (zeros), `var` (ones).
    In training the running statistics move as `stat = momentum * stat + (1 - momentum) * batch`
    (Flax's momentum 0.9 is PyTorch's 0.1), with the unbiased batch variance.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if train:
            y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
            if not self.is_initializing():
                count = math.prod(x.shape[:-1])
                unbiased_var = var * (count / max(count - 1, 1))
                running_mean.value = (self.momentum * running_mean.value
                                      + (1 - self.momentum) * mean)
                running_var.value = (self.momentum * running_var.value
                                     + (1 - self.momentum) * unbiased_var)
            return y
        mean, var = running_mean.value, running_var.value
        return (x - mean) * (scale * lax.rsqrt(var + self.epsilon)) + bias
