"""How a command ends early: bad input (one line, exit code 2) or a run stopped on purpose;
and the checks of numbers that several inputs share.

Library functions raise these; the command-line skeleton (`vae_jax.commands.cli.run`) turns them
into one line on stderr and the exit code, so no user ever sees a traceback for them.
"""

from __future__ import annotations

import math
import numbers

INT32_MAX = 2**31 - 1  # JAX's step counter, schedule positions and array indices are int32


def first_line(error: BaseException) -> str:
    """An error's message as one line (its first; the type's name when it has none)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class InputError(ValueError):
    """Bad input from the user (a flag, a file, a directory, a dataset): exit code 2.

    The message is one line that names the problem, and nothing saved was changed.
    """


class DatasetError(InputError):
    """The dataset is unknown, missing, unreadable, or not 28x28 grayscale images."""


class Stopped(Exception):
    """A run that stopped before its end; `exit_code` is what the command returns."""

    exit_code = 1


class NonFiniteLossError(Stopped):
    """The loss (or the parameters) stopped being finite; nothing non-finite was saved."""


class TrainingInterrupted(Stopped):
    """SIGINT or SIGTERM arrived; a checkpoint was saved first. Exit code 128 + signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


NON_NEGATIVE = "must be a finite number >= 0"  # how a `non_negative` setting is refused


def is_positive_int(value) -> bool:
    """An integer (Python's or numpy's, not a bool) > 0: a count, or z_dim in a file."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def is_non_negative(value) -> bool:
    """Finite and >= 0: what a `non_negative` setting (and its flag) accepts."""
    return 0 <= value < math.inf
