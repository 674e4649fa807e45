"""Batch normalisation with PyTorch's semantics: training mode with a hand-written backward
pass, eval mode, and the running statistics' update (one definition for the linen and the
NNX layers).

The backward pass of training mode is two reductions and one elementwise pass, about half
the passes over the activations that XLA makes of the automatically differentiated formula.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax


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


def batch_norm_eval(x: jax.Array, scale: jax.Array, bias: jax.Array, mean: jax.Array,
                    var: jax.Array, epsilon: float) -> jax.Array:
    """Eval-mode batch normalisation with the running `mean` and `var` (each (C,))."""
    return (x - mean) * (scale * lax.rsqrt(var + epsilon)) + bias


def updated_running_statistics(running_mean: jax.Array, running_var: jax.Array,
                               mean: jax.Array, var: jax.Array, count: int, momentum: float
                               ) -> tuple[jax.Array, jax.Array]:
    """The running statistics after a batch of `count` values a channel with mean `mean` and
    biased variance `var`: `stat = momentum * stat + (1 - momentum) * batch`, with the
    unbiased batch variance, as PyTorch keeps it (Flax's momentum 0.9 is PyTorch's 0.1)."""
    unbiased_var = var * (count / max(count - 1, 1))
    return (momentum * running_mean + (1 - momentum) * mean,
            momentum * running_var + (1 - momentum) * unbiased_var)
