"""orbax's own log lines and tracebacks for a failed save or restore, kept off the screen.

vae-jax reports each failed save or restore itself, in one line; `quiet_orbax` drops orbax's
repetitions of it (see its docstring). The checkpoint modules call it before using orbax.
"""

from __future__ import annotations

import logging
import os
import sys


def quiet_orbax() -> None:
    """Keeps orbax's own reports of a failed save or restore off the screen, for good.

    vae-jax reports every failed save or restore itself, in one line (a checkpoint write
    error, or a warning that names an unreadable checkpoint and the fallback). orbax would
    bury that line: its threads log each failure again with a traceback (through absl's
    logger), and when a restore fails, tensorstore's reads still in flight finish after
    orbax has closed their asyncio event loop and each reports `RuntimeError: Event loop is
    closed` through `sys.unraisablehook`, a dozen tracebacks in all, some after the restore
    has returned. This drops exactly those: the absl log records that orbax's own modules
    emit at warning level or above, and the unraisable errors of orbax's abandoned reads
    (the closed event loop's, and its coroutines' own). Everything else passes.
    """
    global _orbax_quieted
    if _orbax_quieted:
        return
    _orbax_quieted = True
    logging.getLogger("absl").addFilter(
        lambda record: not (record.levelno >= logging.WARNING and is_orbax(record.pathname)))
    previous = sys.unraisablehook

    def hook(unraisable):
        error = unraisable.exc_value
        closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        code = getattr(unraisable.object, "cr_code", None)  # an abandoned orbax coroutine
        abandoned_read = code is not None and is_orbax(code.co_filename)
        if not (closed_loop or abandoned_read):
            previous(unraisable)

    sys.unraisablehook = hook


_orbax_quieted = False


def is_orbax(path: str) -> bool:
    return f"{os.sep}orbax{os.sep}" in path
