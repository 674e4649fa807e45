"""Winograd's stride-1 transposed convolution (vae_jax/kernels/winograd.py) against XLA's own and
against exact float64 sums; which layers `implementation="winograd"` gives it."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import assert_same_value_and_grads, conv_inputs, value_and_vjp
from vae_jax.kernels import convolutions, im2col, winograd
from vae_jax.model import layers

# (input size, kernel size) pairs that Winograd's algorithm takes
# (vae_jax.kernels.winograd.applies).
TILES = [(n, k) for n, k in itertools.product(range(1, 6), range(1, 7))
         if winograd.applies((n, n), (k, k), 1)]


def _direct_float64(x, kernel):
    """The transposed convolution's definition, out[i + p, j + q] += x[i, j] @ kernel[p, q]."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    (batch, height, width, _), (kernel_h, kernel_w, _, out_features) = x.shape, kernel.shape
    out = np.zeros((batch, height + kernel_h - 1, width + kernel_w - 1, out_features))
    for i, j, p, q in itertools.product(range(height), range(width), range(kernel_h),
                                        range(kernel_w)):
        out[:, i + p, j + q] += x[:, i, j] @ kernel[p, q]
    return out


def test_the_tiles_cover_the_course_layer():
    assert (3, 4) in TILES and len(TILES) == 9


@pytest.mark.parametrize("size,kernel", TILES)
def test_transforms_multiply_polynomials_exactly(size, kernel):
    # In float64 the algorithm is the definition up to 1e-12: evaluation, pointwise product
    # and interpolation are exact for polynomials of these degrees, and the kernel's pieces
    # land where their taps belong.
    rng = np.random.default_rng(size * 10 + kernel)
    x = rng.standard_normal((2, size, size, 1))
    w = rng.standard_normal((kernel, kernel, 1, 1))
    to_points, kernel_to_points, from_points = winograd.transforms(size, size, kernel, kernel)
    pieces, points = kernel_to_points.shape[:2]
    chex.assert_shape([to_points, kernel_to_points, from_points],
                      [(points, size * size), (pieces, points, kernel * kernel),
                       ((size + kernel - 1) ** 2, pieces, points)])
    assert pieces * points < (size * kernel) ** 2  # fewer products than the definition's
    values = (x.reshape(2, 1, -1) @ to_points.T) * (kernel_to_points @ w.reshape(-1))
    np.testing.assert_allclose(np.einsum("ojp,bjp->bo", from_points, values),
                               _direct_float64(x, w).reshape(2, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("size,kernel", TILES)
def test_matches_lax_forward_and_backward(size, kernel):
    out_size = size + kernel - 1
    x, w, cotangent = conv_inputs(size, 3, size, 5, 4, kernel, out_size)
    fast = value_and_vjp(lambda x, w, stride: winograd.conv_transpose(x, w), 1)(
        x, w, cotangent)
    reference = value_and_vjp(convolutions.conv_transpose_xla, 1)(x, w, cotangent)
    chex.assert_shape(fast[0], (3, out_size, out_size, 4))
    assert_same_value_and_grads(fast, reference)


def test_rectangular_input_and_kernel():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 2, 3, 3)), jnp.float32)
    w = jnp.asarray(rng.uniform(-0.5, 0.5, (4, 2, 3, 2)), jnp.float32)
    y = winograd.conv_transpose(x, w)
    chex.assert_shape(y, (2, 5, 4, 2))
    np.testing.assert_allclose(y, _direct_float64(x, w), rtol=1e-5, atol=1e-5)


def test_the_course_layer_is_as_exact_as_direct_summation():
    # deconv2 (3x3x256 -> 6x6x128, kernel 4) at batch 8. Measured: 3.2 float32 epsilons of
    # the largest output, against 2.6 for the direct summation of "matmul" (points 0, +-1/2,
    # -2 among them gave 24).
    x, w, _ = conv_inputs(0, 8, 3, 256, 128, 4, 6)
    exact = _direct_float64(x, w)
    scale = np.finfo(np.float32).eps * np.abs(exact).max()
    error = np.abs(np.asarray(jax.jit(winograd.conv_transpose)(x, w)) - exact).max()
    direct = np.abs(np.asarray(im2col.conv_transpose_matmul(x, w, 1)) - exact).max()
    assert error <= 6 * scale
    assert direct <= 6 * scale


def test_float64_inputs_get_float64_transforms():
    with jax.enable_x64(True):
        x, w, _ = conv_inputs(1, 2, 3, 4, 3, 4, 6)
        x, w = x.astype(jnp.float64), w.astype(jnp.float64)
        y = winograd.conv_transpose(x, w)
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(y, _direct_float64(x, w), rtol=0, atol=1e-12)


@pytest.mark.parametrize("in_axes,out_axis", [(1, 0), (0, 1), (2, 2), (0, 0), ((0, 2), 1),
                                              ((1, 2), 0)])
def test_apply_along_is_a_matrix_product_along_its_axes(in_axes, out_axis):
    # Values and the custom backward pass against tensordot's, for a matrix of the
    # transforms' kind (0, +-1, +-1/2, +-1/4, a row of zeros), over one axis or two (whose
    # sizes 2 x 2 the columns index row-major), the result's axis moved or not.
    matrix = np.array([[1, 0, -1, 0.5], [0, 0, 0, 0], [-0.25, 1, 1, -1]])
    axes = (in_axes,) if isinstance(in_axes, int) else in_axes
    shape = [5, 6, 7]
    for axis in axes:
        shape[axis] = 4 // len(axes)
    array = jax.random.normal(jax.random.key(len(axes) * 10 + out_axis), tuple(shape))

    def reference(array):
        moved = jnp.moveaxis(array, axes, tuple(range(len(axes))))
        flat = moved.reshape((4,) + moved.shape[len(axes):])
        return jnp.moveaxis(jnp.tensordot(matrix, flat, axes=1), 0, out_axis)

    value, vjp = jax.vjp(lambda a: winograd.apply_along(matrix, a, in_axes, out_axis), array)
    expected, expected_vjp = jax.vjp(reference, array)
    chex.assert_shape(value, expected.shape)
    cotangent = jax.random.normal(jax.random.key(99), expected.shape)
    chex.assert_trees_all_close((value, vjp(cotangent)), (expected, expected_vjp(cotangent)),
                                rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("input_hw,kernel_hw,stride,expected", [
    ((3, 3), (4, 4), 1, True),      # the course's deconv2: 4 pieces x 16 points for 144
    ((2, 3), (3, 2), 1, True),
    ((2, 2), (4, 4), 1, False),     # 2 pieces x 4 points per axis: no fewer than 2 x 4
    ((3, 3), (4, 4), 2, False),     # strided
    ((1, 1), (3, 3), 1, False),     # one input pixel: nothing to save
    ((3, 3), (1, 1), 1, False),     # a 1x1 kernel: nothing to save
    ((4, 4), (4, 4), 1, False),     # 4 pixels per axis leave 1 tap per piece: no saving
    ((6, 6), (3, 3), 2, False),     # the course's deconv3
])
def test_applies(input_hw, kernel_hw, stride, expected):
    assert winograd.applies(input_hw, kernel_hw, stride) is expected


def test_refuses_layers_where_it_saves_nothing():
    with pytest.raises(ValueError, match="at most 4 pixels per axis .* got input 4x4"):
        winograd.conv_transpose(jnp.zeros((1, 4, 4, 2)), jnp.zeros((4, 4, 2, 2)))


@pytest.mark.parametrize("size,kernel,stride,takes_winograd", [
    (3, 4, 1, True), (6, 3, 2, False), (1, 3, 2, False), (4, 4, 1, False)])
def test_the_module_takes_winograd_only_where_it_applies(monkeypatch, size, kernel, stride,
                                                         takes_winograd):
    calls = []
    real = winograd.conv_transpose
    monkeypatch.setattr(winograd, "conv_transpose", lambda x, w: calls.append(1) or real(x, w))
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)), jnp.float32)
    module = layers.ConvTranspose2d(4, kernel, stride, implementation="winograd")
    variables = module.init(jax.random.key(0), x)
    y = module.apply(variables, x)
    assert bool(calls) is takes_winograd
    y_xla = layers.ConvTranspose2d(4, kernel, stride, implementation="xla").apply(variables, x)
    np.testing.assert_allclose(y, y_xla, rtol=1e-5, atol=1e-5)


def test_the_models_gradients_match_xla_through_batchnorm():
    # The BatchNorm after deconv1 subtracts means in its backward pass, which magnifies
    # error in deconv2's input gradient. Evaluation points 1/2 and -2 (six per axis) put
    # deconv1's kernel gradient 9e-4 of its largest entry off on this batch; direct
    # summation and the points used now, about 1e-6.
    import optax

    from vae_jax import VAE
    from vae_jax.model import losses
    from vae_jax.training import train_state
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(40, 28, 28, 1))[24:],
                         jnp.float32)
    keys = train_state.RunKeys.from_seed(0)
    gradients = {}
    for implementation in ("xla", "winograd"):
        model = VAE(implementation=implementation)
        state = train_state.create_train_state(model, optax.sgd(1e-5), keys.init, keys.train)

        def loss(params):
            (logits, mean, stddev), _ = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, images,
                jax.random.key(24), train=True, mutable=["batch_stats"])
            return losses.vae_loss(logits, images, mean, stddev)[0]

        gradients[implementation] = jax.jit(jax.grad(loss))(state.params)
    for name in ("deconv1", "deconv2", "deconv3"):
        ours, reference = (gradients[i]["decoder"][name]["kernel"] for i in ("winograd", "xla"))
        assert np.abs(ours - reference).max() <= 2e-5 * np.abs(reference).max(), name
