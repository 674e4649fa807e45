"""How a command ends early: bad input (one line, exit code 2) or a run stopped on purpose.

Library functions raise these; the command-line skeleton (`vae_jax.cli.run`) turns them
into one line on stderr and the exit code, so no user ever sees a traceback for them.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user (a flag, a file, a directory, a dataset): exit code 2.

    The message is one line that names the problem, and nothing saved was changed.
    """


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
