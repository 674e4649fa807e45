"""Calling a learner's function and reading what it returns, without ever raising anything
but `Mistake`, whose message is the hint."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.exercises.registry import Exercise
from vae_jax.runtime.errors import first_line

NOT_IMPLEMENTED = ("not implemented yet: replace `raise NotImplementedError` with your code, "
                   "then run the check again")
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


class Mistake(Exception):
    """The learner's answer is wrong; the message is the hint (one sentence)."""


def call(exercise: Exercise, fn: Callable, *args):
    """`fn(*args)`; an exception it raises becomes the hint."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise Mistake(NOT_IMPLEMENTED) from None
    except Mistake:
        raise
    except Exception as error:  # noqa: BLE001 - any error of the learner's is a hint
        raise Mistake(f"{exercise.signature} raised {type(error).__name__} "
                      f"({first_line(error)[:200]}); {exercise.contract}") from None


def call_jitted(exercise: Exercise, fn: Callable, *args):
    """`jax.jit(fn)(*args)`; a function that cannot be traced is told why it matters."""
    try:
        return jax.jit(fn)(*args)
    except NotImplementedError:
        raise Mistake(NOT_IMPLEMENTED) from None
    except Mistake:
        raise
    except Exception as error:  # noqa: BLE001
        raise Mistake(f"{exercise.signature} works on its own but not under jax.jit "
                      f"({type(error).__name__}: {first_line(error)[:160]}); compute with "
                      f"jnp and jax functions, not Python's `if`, float() or NumPy on the "
                      f"arrays, so that JAX can trace it and compile it once") from None


def pair(exercise: Exercise, value, names: str) -> tuple:
    """The two values of a function that returns a pair (`names` as "mean, stddev")."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        got = (f"a {type(value).__name__} of {len(value)}" if isinstance(value, (tuple, list))
               else f"a {type(value).__name__}")
        raise Mistake(f"{exercise.signature} should return a pair ({names}), got {got}")
    return tuple(value)


def array(value, what: str, shape: tuple, *, explain_shape: Callable | None = None,
          not_finite: str | None = None) -> np.ndarray:
    """`value` as a float64 NumPy array after checking it is a floating-point array of
    `shape` with finite values; `explain_shape(shape)` may give a shape's own hint."""
    if isinstance(value, (tuple, list)):
        raise Mistake(f"{what} should be one array of shape {shape}, got a "
                      f"{type(value).__name__} of {len(value)}")
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise Mistake(f"{what} should be a JAX array of shape {shape}, got "
                      f"{type(value).__name__}")
    got = tuple(value.shape)
    if got != tuple(shape):
        raise Mistake((explain_shape and explain_shape(got))
                      or f"{what} has shape {got} where {tuple(shape)} was expected")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise Mistake(f"{what} has dtype {value.dtype}; it should be floating point "
                      f"(float32), like the arrays it is computed from")
    result = np.asarray(value, np.float64)
    if not np.isfinite(result).all():
        raise Mistake(not_finite or f"{what} holds NaN or inf for ordinary inputs: look for a "
                                    f"log of 0 or of a negative number, or an exp that "
                                    f"overflows")
    return result


def close(actual, expected, **tolerance) -> bool:
    """Whether two arrays of one shape agree within float32 rounding (or `tolerance`)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return actual.shape == expected.shape and np.allclose(actual, expected,
                                                          **(tolerance or TOLERANCE))


def key_data(key) -> np.ndarray:
    """A PRNG key's raw bits, for comparing keys (new-style typed keys or raw uint32)."""
    if hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key)
