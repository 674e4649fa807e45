"""Exercises: the course's VAE written by the learner, piece by piece, each checked.

    from vae_jax import exercises

    exercises.names()                # ("split", "reparameterize", "kl", ...), in order
    result = exercises.check("kl", kl)
    result.passed, result.hint       # True and "", or False and one sentence
    print(exercises.solution("kl"))  # the reference solution, for after trying

A check runs the learner's function on fixed and pseudo-random cases against the library's
own implementation (`vae_jax.model`, `vae_jax.training.steps`) and looks only at behaviour:
values, shapes, dtypes, gradients, keys and `jax.jit`. It never raises for a wrong answer:
an exception, a wrong shape or a NaN becomes the hint, which names the mistake and the idea
behind it. `notebooks/exercises.ipynb` is the exercises with their explanations;
`vae-jax-grade` grades a class's notebooks (`vae_jax.exercises.grading`).

* `registry.py`: the exercises, their signatures and contracts;
* `math_checks.py`: the checks of split, reparameterize, kl, reconstruction, loss,
  sample and iwae;
* `train_step_check.py`: the check of train_step against the library's step;
* `answers.py`: calling a learner's function and reading its results safely;
* `result.py`: `CheckResult`, the verdict;
* `solutions.py`: the reference solutions;
* `practice.py`: the notebook's data, training loop and pictures;
* `grading.py`: notebooks run in fresh kernels and graded.
"""

from __future__ import annotations

import inspect
from typing import Callable

from vae_jax.exercises.registry import exercise, names
from vae_jax.exercises.result import CheckResult

__all__ = ["CheckResult", "check", "names", "solution"]


def _checks() -> dict[str, Callable]:
    from vae_jax.exercises import math_checks, train_step_check
    return {name: getattr(math_checks, f"check_{name}", None)
            or getattr(train_step_check, f"check_{name}") for name in names()}


def check(name: str, fn) -> CheckResult:
    """Runs the check of exercise `name` on the learner's function `fn`.

    Returns a `CheckResult` (`.passed`, `.hint`), shown as one verdict line. An unknown
    `name` is a ValueError (the exercises are `names()`); anything wrong with `fn`, even an
    exception it raises, is the hint.
    """
    from vae_jax.exercises.answers import Mistake
    from vae_jax.runtime.errors import first_line
    ex = exercise(name)
    if not callable(fn):
        return CheckResult(name, False, f"{ex.signature} should be a function, got "
                                        f"{type(fn).__name__}: define it with def {name}(...)")
    try:
        _checks()[name](fn)
    except Mistake as mistake:
        return CheckResult(name, False, str(mistake))
    except RecursionError:
        return CheckResult(name, False, f"{ex.signature} recursed without end: does it call "
                                        f"itself instead of a library function?")
    except Exception as error:  # noqa: BLE001 - what a check could not foresee is a hint too
        return CheckResult(name, False, f"the check could not use what {ex.signature} "
                                        f"returned ({type(error).__name__}: "
                                        f"{first_line(error)[:160]}); {ex.contract}")
    return CheckResult(name, True)


def solution(name: str) -> str:
    """The reference solution of exercise `name`, as source text."""
    from vae_jax.exercises import solutions
    exercise(name)
    return inspect.getsource(getattr(solutions, name))
