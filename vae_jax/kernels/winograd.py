"""Winograd's minimal filtering for stride-1 transposed convolutions (the course's deconv2).

A stride-1 transposed convolution is a polynomial product. Along one axis it computes
`out[i + p] += x[i] * kernel[p]`, so with x(t) = sum x[i] t^i and kernel(t) = sum kernel[p] t^p,
out(t) = x(t) * kernel(t). Evaluate both factors at enough points, multiply the values, and
interpolate: one multiply per point instead of one per (i, p) pair (Toom-Cook; the minimal
algorithm of Winograd that Lavin & Gray, 2015, brought to convolutional networks).

Only the points 0, 1, -1 and infinity (where a polynomial's value is its leading
coefficient) are used: their transforms add, subtract and halve, so the result is as exact as
direct summation. Points such as 1/2 and -2 need larger multipliers, and their rounding,
magnified by BatchNorm's backward pass, put a gradient 1e-3 off (tests/test_winograd.py).
Four points per axis take an input of n <= 4 pixels times a kernel piece of 5 - n taps, so
the kernel is cut into pieces, each multiplied at the same points and placed at its offset
by the interpolation. Along one axis of the course's deconv2 (3 pixels, 4 taps): two pieces
of 2 taps at 4 points, 8 products instead of 12; in 2-D, 64 instead of 144, so its matmuls
shrink 2.25-fold, to 16 of (B, Cin) @ (Cin, 4*Cout):

    values(x)      = to_points @ x                 (P, B, Cin)        evaluation
    values(kernel) = kernel_to_points @ kernel     (P, Cin, J*Cout)   each of J pieces
    y              = from_points @ (values(x) @ values(kernel))       (Ho*Wo, B, Cout)

with P = Ph * Pw points and J = Jh * Jw pieces. Each transform is a small constant matrix
of 0, +-1, +-1/2 and +-1/4, and a Kronecker product of one per axis. The two that touch
activations are applied one axis at a time as sums of whole rows of channels
(`apply_along`), with the transposed sums as their backward pass: as einsums, XLA had
transposed the products element by element, and the step ran 8-10% slower
(docs/guides/performance.md). So this layer, like the "matmul" ones, has reverse-mode
derivatives only.
"""

from __future__ import annotations

import functools
import itertools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

INFINITY = None
# Evaluation points, in the order taken: P points are the first P - 1 and infinity, where a
# polynomial's value is its leading coefficient.
POINTS: tuple[Fraction, ...] = (Fraction(0), Fraction(1), Fraction(-1))
MAX_POINTS = len(POINTS) + 1


def _points(count: int) -> tuple:
    return POINTS[:count - 1] + (INFINITY,)


def _evaluation(points: tuple, terms: int) -> np.ndarray:
    """(len(points), terms): row a evaluates a polynomial of `terms` coefficients at points[a]."""
    rows = [[Fraction(int(i == terms - 1)) for i in range(terms)] if point is INFINITY
            else [point ** i for i in range(terms)] for point in points]
    return np.array(rows, dtype=np.float64)


def split(size: int, kernel: int) -> tuple[int, int, int]:
    """Along one axis of `size` pixels and `kernel` taps: (taps per piece, pieces, points),
    with as many taps per piece as MAX_POINTS points allow (size + taps - 1 points)."""
    piece = min(kernel, MAX_POINTS + 1 - size)
    return piece, -(-kernel // piece), size + piece - 1


@functools.lru_cache(maxsize=None)
def _axis_transforms(size: int, kernel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One axis, the kernel cut into J pieces (`split`), P points:
    (to_points (P, size), kernel_to_points (J, P, kernel), from_points (size+kernel-1, J, P)).

    Piece j is the polynomial of taps j*piece ... ; its product with x lands at offset
    j*piece of the output, so interpolation places each piece's coefficients there.
    """
    piece, pieces, count = split(size, kernel)
    points = _points(count)
    interpolate = np.linalg.inv(_evaluation(points, count))
    kernel_to_points = np.zeros((pieces, len(points), kernel))
    from_points = np.zeros((size + kernel - 1, pieces, len(points)))
    for j in range(pieces):
        # The last piece may be shorter: its missing taps are zeros (which matters at
        # infinity, where the value is the coefficient of degree piece - 1).
        taps = min(piece, kernel - j * piece)
        kernel_to_points[j, :, j * piece:j * piece + taps] = _evaluation(points, piece)[:, :taps]
        from_points[j * piece:j * piece + size + taps - 1, j] = interpolate[:size + taps - 1]
    return _evaluation(points, size), kernel_to_points, from_points


@functools.lru_cache(maxsize=None)
def transforms(height: int, width: int, kernel_h: int, kernel_w: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 2-D transforms, float64, with J = Jh*Jw kernel pieces and P = Ph*Pw points:
    to_points (P, H*W), kernel_to_points (J, P, kH*kW), from_points (Ho*Wo, J, P)."""
    (to_h, kernel_to_h, from_h), (to_w, kernel_to_w, from_w) = (
        _axis_transforms(height, kernel_h), _axis_transforms(width, kernel_w))
    pieces = kernel_to_h.shape[0] * kernel_to_w.shape[0]
    points = to_h.shape[0] * to_w.shape[0]
    return (np.kron(to_h, to_w),
            np.einsum("apk,bql->abpqkl", kernel_to_h, kernel_to_w).reshape(
                pieces, points, kernel_h * kernel_w),
            np.einsum("oap,rbq->orabpq", from_h, from_w).reshape(
                (height + kernel_h - 1) * (width + kernel_w - 1), pieces, points))


def apply_along(matrix: np.ndarray, array: jax.Array, in_axes: int | tuple[int, ...],
                out_axis: int) -> jax.Array:
    """A constant (M, N) matrix applied along one or more axes of `array`.

    The columns index the (increasing) `in_axes` of `array` together, row-major over their
    sizes (N in all): `out.take(m, out_axis) = sum_n matrix[m, n] * array[..., n, ...]`. The
    result has the remaining axes in order, with M inserted at `out_axis`. Computed as sums
    of slices (each a whole block of contiguous channels), which XLA fuses into one pass, with no
    transpose; the backward pass is the same with the transposed matrix.
    """
    in_axes = (in_axes,) if isinstance(in_axes, int) else tuple(in_axes)
    if list(in_axes) != sorted(set(in_axes)):
        raise ValueError(f"apply_along takes increasing axes, got {in_axes}")
    rows = tuple(tuple(float(value) for value in row) for row in np.asarray(matrix))
    return _along(rows, in_axes, (len(rows),), (out_axis,))(array)


@functools.lru_cache(maxsize=None)
def _along(rows: tuple[tuple[float, ...], ...], in_axes: tuple[int, ...],
           out_sizes: tuple[int, ...], out_axes: tuple[int, ...]):
    """`apply_along` with its custom VJP: the rows of the matrix index `out_sizes` (placed at
    the increasing `out_axes` of the result), its columns the `in_axes` of the input."""

    @jax.custom_vjp
    def along(array):
        in_sizes = tuple(array.shape[axis] for axis in in_axes)
        slices = []
        for position in itertools.product(*map(range, in_sizes)):
            index = [slice(None)] * array.ndim
            for axis, at in zip(in_axes, position):
                index[axis] = at
            slices.append(array[tuple(index)])
        sums = []
        for row in rows:
            # Each product is exact (the values are 0, +-1, +-1/2, +-1/4).
            terms = [value * slices[n] for n, value in enumerate(row) if value != 0]
            sums.append(functools.reduce(lax.add, terms) if terms
                        else jnp.zeros_like(slices[0]))
        # Stack the last output axis first: axis k goes in before axes 0..k-1 exist.
        for k in reversed(range(len(out_sizes))):
            group = len(sums) // out_sizes[k]
            sums = [jnp.stack(sums[g * out_sizes[k]:(g + 1) * out_sizes[k]],
                              axis=out_axes[k] - k) for g in range(group)]
        return sums[0]

    def backward(in_sizes, cotangent):
        return (_along(tuple(zip(*rows)), out_axes, in_sizes, in_axes)(cotangent),)

    along.defvjp(lambda array: (along(array), tuple(array.shape[a] for a in in_axes)),
                 backward)
    return along


def applies(input_hw: tuple[int, int], kernel_hw: tuple[int, int], stride: int) -> bool:
    """Whether `conv_transpose` takes this layer: stride 1, an input of at most MAX_POINTS
    pixels per axis, and fewer multiplies than the direct computation."""
    (height, width), (kernel_h, kernel_w) = input_hw, kernel_hw
    if stride != 1 or max(height, width) > MAX_POINTS:
        return False
    (_, pieces_h, points_h), (_, pieces_w, points_w) = (
        split(height, kernel_h), split(width, kernel_w))
    return pieces_h * points_h * pieces_w * points_w < height * width * kernel_h * kernel_w


def conv_transpose(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """PyTorch ConvTranspose2d with stride 1 (padding 0, no bias) by Winograd's algorithm.

    x: (B, H, W, Cin); kernel: (kH, kW, Cin, Cout). Returns (B, H+kH-1, W+kW-1, Cout), the
    values of `layers.conv_transpose_matmul(x, kernel, 1)` up to rounding. Only for layers
    where `applies` holds.
    """
    batch, height, width, in_features = x.shape
    kernel_h, kernel_w, _, out_features = kernel.shape
    if not applies((height, width), (kernel_h, kernel_w), 1):
        raise ValueError(f"Winograd's transposed convolution takes inputs of at most "
                         f"{MAX_POINTS} pixels per axis where it saves multiplies, got input "
                         f"{height}x{width} and kernel {kernel_h}x{kernel_w}")
    (to_h, _, from_h), (to_w, _, from_w) = (_axis_transforms(height, kernel_h),
                                             _axis_transforms(width, kernel_w))
    points_h, points_w = len(to_h), len(to_w)
    (out_h, pieces_h, _), (out_w, pieces_w, _) = from_h.shape, from_w.shape
    # (P, B, Cin): each point a sum of input pixels (rows of Cin channels), one axis at a time.
    x_values = apply_along(to_w, apply_along(to_h, x, 1, 0), 2, 1).reshape(
        points_h * points_w, batch, in_features)
    # The kernel's transform is small: an einsum, exact (no TF32 on a GPU).
    kernel_to_points = transforms(height, width, kernel_h, kernel_w)[1]
    kernel_values = jnp.einsum("jpk,kcd->pcjd", jnp.asarray(kernel_to_points, x.dtype),
                               kernel.reshape(kernel_h * kernel_w, in_features, out_features),
                               precision=lax.Precision.HIGHEST)
    # All pieces at once: (P, B, Cin) @ (P, Cin, J*Cout).
    y_values = lax.dot_general(
        x_values, kernel_values.reshape(points_h * points_w, in_features, -1),
        (((2,), (1,)), ((0,), (0,))))
    # Interpolation, one axis at a time, each over its (point, piece) pairs: rows, then columns.
    y_values = y_values.reshape(points_h, points_w, batch, pieces_h, pieces_w, out_features)
    rows = apply_along(from_h.transpose(0, 2, 1).reshape(out_h, -1), y_values, (0, 3), 2)
    # rows: (Pw, B, Ho, Jw, Cout) -> (B, Ho, Wo, Cout)
    return apply_along(from_w.transpose(0, 2, 1).reshape(out_w, -1), rows, (0, 3), 2)
