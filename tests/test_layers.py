"""The convolution implementations against XLA's own, and BatchNorm's PyTorch semantics.

`conv_transpose_matmul` / `conv_matmul` (gathers + matmuls, hand-written backward pass) must
give the values and the gradients (input and kernel) of `lax.conv_transpose` with the kernel
flipped (`conv_transpose_xla`, PyTorch's ConvTranspose2d) / `lax.conv_general_dilated`.
"""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from tests.helpers import CONV_TOLERANCE, assert_same_value_and_grads, conv_inputs, value_and_vjp
from vae_jax.kernels import batch_norm, convolutions, im2col
from vae_jax.model import layers

STRIDES = (1, 2)
KERNELS = (2, 3, 4, 5)
# (batch, input size, in channels, out channels)
SHAPES = ((1, 1, 3, 2), (2, 3, 4, 5), (3, 4, 1, 1))


@pytest.mark.parametrize("stride,kernel", itertools.product(STRIDES, KERNELS))
def test_conv_transpose_matmul_matches_lax_forward_and_backward(stride, kernel):
    for seed, (batch, size, cin, cout) in enumerate(SHAPES):
        out_size = (size - 1) * stride + kernel
        x, w, cotangent = conv_inputs(seed, batch, size, cin, cout, kernel, out_size)
        fast = value_and_vjp(im2col.conv_transpose_matmul, stride)(x, w, cotangent)
        reference = value_and_vjp(convolutions.conv_transpose_xla, stride)(x, w, cotangent)
        assert fast[0].shape == (batch, out_size, out_size, cout)
        assert_same_value_and_grads(fast, reference)


@pytest.mark.parametrize("stride,kernel", itertools.product(STRIDES, KERNELS))
def test_conv_matmul_matches_lax_forward_and_backward(stride, kernel):
    # Input sizes leave some rows and columns unused when the stride does not divide evenly.
    for seed, (batch, extra, cin, cout) in enumerate(SHAPES):
        size = kernel + 2 * stride + extra
        out_size = (size - kernel) // stride + 1
        x, w, cotangent = conv_inputs(seed, batch, size, cin, cout, kernel, out_size)
        fast = value_and_vjp(im2col.conv_matmul, stride)(x, w, cotangent)
        reference = value_and_vjp(convolutions.conv_xla, stride)(x, w, cotangent)
        assert fast[0].shape == (batch, out_size, out_size, cout)
        assert_same_value_and_grads(fast, reference)


def test_the_models_layer_shapes_match_lax():
    """The VAE's own seven layers at batch 2: 28->13->5->1 and 1->3->6->13->28."""
    cases = [(im2col.conv_matmul, convolutions.conv_xla, 28, 1, 16, 4, 2, 13),
             (im2col.conv_matmul, convolutions.conv_xla, 13, 16, 32, 4, 2, 5),
             (im2col.conv_matmul, convolutions.conv_xla, 5, 32, 64, 4, 2, 1),
             (im2col.conv_transpose_matmul, convolutions.conv_transpose_xla, 1, 32, 256, 3, 2, 3),
             (im2col.conv_transpose_matmul, convolutions.conv_transpose_xla, 3, 256, 128, 4, 1, 6),
             (im2col.conv_transpose_matmul, convolutions.conv_transpose_xla, 6, 128, 64, 3, 2, 13),
             (im2col.conv_transpose_matmul, convolutions.conv_transpose_xla, 13, 64, 1, 4, 2, 28)]
    for seed, (fast, slow, size, cin, cout, kernel, stride, out_size) in enumerate(cases):
        x, w, cotangent = conv_inputs(seed, 2, size, cin, cout, kernel, out_size)
        assert_same_value_and_grads(value_and_vjp(fast, stride)(x, w, cotangent),
                     value_and_vjp(slow, stride)(x, w, cotangent))


class JitAndEagerTest(chex.TestCase):
    """The custom VJPs traced under jit and run op by op give the same gradients."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((1, 3), (2, 4))
    def test_conv_transpose_gradients(self, stride, kernel):
        x, w, _ = conv_inputs(0, 2, 3, 2, 3, kernel, (3 - 1) * stride + kernel)

        def loss(fn, x, w):
            return jnp.sum(jnp.sin(fn(x, w, stride)))

        grads = self.variant(jax.grad(functools.partial(loss, im2col.conv_transpose_matmul),
                                      argnums=(0, 1)))(x, w)
        expected = jax.grad(functools.partial(loss, convolutions.conv_transpose_xla),
                            argnums=(0, 1))(x, w)
        for a, b in zip(grads, expected):
            np.testing.assert_allclose(a, b, **CONV_TOLERANCE)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((1, 2), (2, 3))
    def test_conv_gradients(self, stride, kernel):
        x, w, _ = conv_inputs(0, 2, 9, 2, 3, kernel, 1)

        def loss(fn, x, w):
            return jnp.sum(jnp.sin(fn(x, w, stride)))

        grads = self.variant(jax.grad(functools.partial(loss, im2col.conv_matmul),
                                      argnums=(0, 1)))(x, w)
        expected = jax.grad(functools.partial(loss, convolutions.conv_xla), argnums=(0, 1))(x, w)
        for a, b in zip(grads, expected):
            np.testing.assert_allclose(a, b, **CONV_TOLERANCE)


@pytest.mark.parametrize("size,kernel,stride", [(1, 3, 2), (3, 4, 1), (6, 3, 2), (13, 4, 2),
                                                (4, 2, 2), (2, 5, 1)])
def test_conv_transpose2d_module_output_shape_and_implementations(size, kernel, stride):
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)), jnp.float32)
    module = layers.ConvTranspose2d(4, kernel, stride, implementation="xla")
    variables = module.init(jax.random.key(0), x)
    y_xla = module.apply(variables, x)
    expected = (size - 1) * stride + kernel
    assert y_xla.shape == (2, expected, expected, 4)
    for implementation in ("matmul", "winograd"):
        y = layers.ConvTranspose2d(4, kernel, stride,
                                   implementation=implementation).apply(variables, x)
        np.testing.assert_allclose(y, y_xla, err_msg=implementation, **CONV_TOLERANCE)


def test_conv2d_module_output_shape_and_implementations():
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (2, 28, 28, 1)), jnp.float32)
    module = layers.Conv2d(16, 4, 2, implementation="xla")
    variables = module.init(jax.random.key(0), x)
    y_xla = module.apply(variables, x)
    assert y_xla.shape == (2, 13, 13, 16)
    for implementation in ("matmul", "winograd"):  # "winograd" convolves as "matmul" does
        y = layers.Conv2d(16, 4, 2, implementation=implementation).apply(variables, x)
        np.testing.assert_allclose(y, y_xla, err_msg=implementation, **CONV_TOLERANCE)


def _batch_norm_input():
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(3.0, 2.0, (4, 3, 3, 5)), jnp.float32)


def test_batch_norm_train_uses_batch_statistics_and_updates_with_unbiased_variance():
    x = _batch_norm_input()
    module = layers.BatchNorm()
    variables = module.init(jax.random.key(0), x, train=True)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(5))
    np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(5))
    y, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])

    values = np.asarray(x, np.float64).reshape(-1, 5)
    mean, biased_var, unbiased_var = values.mean(0), values.var(0), values.var(0, ddof=1)
    expected = (values - mean) / np.sqrt(biased_var + 1e-5)
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 5), expected, rtol=1e-5, atol=1e-5)
    # PyTorch's momentum 0.1: new = 0.9 * old + 0.1 * batch (unbiased variance).
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * unbiased_var,
                               rtol=1e-5)


def test_batch_norm_eval_uses_running_statistics_and_leaves_them_alone():
    x = _batch_norm_input()
    rng = np.random.default_rng(1)
    stats = {"mean": jnp.asarray(rng.normal(size=5), jnp.float32),
             "var": jnp.asarray(rng.uniform(0.5, 2.0, 5), jnp.float32)}
    params = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, 5), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=5), jnp.float32)}
    y, updates = layers.BatchNorm().apply({"params": params, "batch_stats": stats}, x,
                                          train=False, mutable=["batch_stats"])
    expected = ((np.asarray(x) - stats["mean"]) / np.sqrt(np.asarray(stats["var"]) + 1e-5)
                * params["scale"] + params["bias"])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_equal(updates["batch_stats"], stats)


def _batch_norm_reference(x, scale, bias, epsilon):
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) * (scale * jax.lax.rsqrt(var + epsilon)) + bias, mean, var


def test_batch_norm_train_custom_gradient_matches_autodiff():
    """The hand-written backward pass, including cotangents that reach mean and var."""
    x = _batch_norm_input()
    rng = np.random.default_rng(2)
    scale, bias, weights = (jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)
                            for shape in ((5,), (5,), x.shape))

    def loss(fn, x, scale, bias):
        y, mean, var = fn(x, scale, bias, 1e-5)
        return jnp.sum(jnp.sin(y) * weights) + jnp.sum(mean * bias) + jnp.sum(var * scale)

    grads = jax.jit(jax.grad(functools.partial(loss, batch_norm.batch_norm_train),
                             argnums=(0, 1, 2)))(x, scale, bias)
    expected = jax.grad(functools.partial(loss, _batch_norm_reference),
                        argnums=(0, 1, 2))(x, scale, bias)
    for a, b in zip(grads, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(batch_norm.batch_norm_train(x, scale, bias, 1e-5),
                    _batch_norm_reference(x, scale, bias, 1e-5)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_resolve_implementation():
    for name in ("xla", "matmul", "winograd"):
        assert convolutions.resolve_implementation(name) == name
    expected_auto = {"cpu": "winograd", "gpu": "matmul", "tpu": "xla"}[jax.default_backend()]
    assert convolutions.resolve_implementation("auto") == expected_auto


@pytest.mark.parametrize("name", ["bogus", "XLA", "", None])
def test_resolve_implementation_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="implementation must be one of"):
        convolutions.resolve_implementation(name)


def test_modules_reject_unknown_implementation():
    x = jnp.zeros((1, 4, 4, 1))
    with pytest.raises(ValueError, match="implementation must be one of"):
        layers.Conv2d(2, 2, implementation="fast").init(jax.random.key(0), x)


def _col2im_reference(blocks: np.ndarray, stride: int) -> np.ndarray:
    """col2im by its definition: out[b, stride*i + p, stride*j + q] += blocks[b, i, j, p, q]."""
    batch, height, width, kernel_h, kernel_w, channels = blocks.shape
    out = np.zeros((batch, (height - 1) * stride + kernel_h, (width - 1) * stride + kernel_w,
                    channels), blocks.dtype)
    for i, j, p, q in itertools.product(range(height), range(width), range(kernel_h),
                                        range(kernel_w)):
        out[:, stride * i + p, stride * j + q] += blocks[:, i, j, p, q]
    return out


@pytest.mark.parametrize("one_pass", [False, True])
@pytest.mark.parametrize("height,width,kernel_h,kernel_w,stride", [
    (3, 3, 4, 4, 1), (6, 6, 3, 3, 2), (13, 13, 4, 4, 2), (2, 2, 3, 3, 3),
    (5, 4, 3, 4, 2),   # rectangular input and kernel
    (4, 3, 2, 2, 3),   # kernel shorter than the stride: phases that receive nothing
    (1, 1, 3, 3, 2)])  # blocks that do not overlap
def test_col2im_sums_the_blocks_into_place(height, width, kernel_h, kernel_w, stride, one_pass):
    # Each path (gather then sum, phases, the evaluation's one-pass gathers) by definition.
    blocks = jax.random.normal(jax.random.key(height * width),
                               (3, height, width, kernel_h, kernel_w, 5))
    out = im2col._col2im(blocks, stride, one_pass=one_pass)
    expected = _col2im_reference(np.asarray(blocks), stride)
    chex.assert_shape(out, expected.shape)
    chex.assert_trees_all_close(out, expected, rtol=1e-6, atol=1e-6)


def test_undifferentiated_transposed_convolution_matches_lax_on_the_models_layers():
    # The primal path (one-pass col2im) of each decoder layer, against XLA's own.
    for seed, (size, cin, cout, kernel, stride) in enumerate(
            [(1, 32, 256, 3, 2), (3, 256, 128, 4, 1), (6, 128, 64, 3, 2), (13, 64, 1, 4, 2)]):
        x = jax.random.normal(jax.random.key(seed), (4, size, size, cin))
        w = jax.random.normal(jax.random.key(seed + 10), (kernel, kernel, cin, cout)) * 0.05
        chex.assert_trees_all_close(jax.jit(im2col.conv_transpose_matmul, static_argnums=2)(
            x, w, stride), convolutions.conv_transpose_xla(x, w, stride), **CONV_TOLERANCE)
