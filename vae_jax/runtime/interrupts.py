"""Ctrl-C honoured whatever the process is doing when it arrives (standard library only).

Python turns SIGINT into a KeyboardInterrupt at the main thread's next bytecode, and three
places lose it or worse: a garbage-collector callback (jaxlib registers one), where Python
prints `Exception ignored in ...` and goes on; an extension module's initialisation, where
it surfaces as an ImportError, a printed traceback, or jaxlib's `std::terminate` (the
process aborts); and the code around such an import, which reports its own error instead.
`hold()` (from a command's first line) and `release()` (once its modules have loaded) hold
Ctrl-C while JAX and the rest load and raise it then (loading writes nothing, so a stop
then is safe); `deferred()` does the same around a later heavy import. `install()` counts
the interrupts that arrive (its handler otherwise acts as Python's default) and re-delivers
one that a callback swallowed; `arrived()` tells the command line that the error it caught
came from Ctrl-C, so it stops with `PROG: interrupted` and exit code 130. A training run
replaces the handler while it trains (`vae_jax.training.hooks`) and saves a checkpoint
first. A Ctrl-C in the first tenth of a second lands in Python's own start-up, before any
of this runs.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
import time

REDELIVERY_SECONDS = 0.05  # time for the callback that swallowed an interrupt to return
_arrivals = 0
_installed = False
_holding = False
_held: list[int] = []


def _count_and_interrupt(signum, frame):
    global _arrivals
    _arrivals += 1
    raise KeyboardInterrupt


def _main_thread_and_not_ignored() -> bool:
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None))


def hold() -> None:
    """From now until `release()`, Ctrl-C is noted, not raised (main thread only)."""
    global _holding
    if not _holding and _main_thread_and_not_ignored():
        _holding = True
        signal.signal(signal.SIGINT, lambda signum, frame: _held.append(signum))


def release() -> None:
    """Ends `hold()`, installs the counting handler (`install`), and raises
    KeyboardInterrupt now if Ctrl-C arrived while held."""
    global _holding, _arrivals
    was_holding, _holding = _holding, False
    if was_holding:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    install()
    if _held:
        _arrivals += len(_held)
        _held.clear()
        raise KeyboardInterrupt


def install() -> None:
    """Counts SIGINT's arrivals and re-delivers a swallowed one; once per process, from the
    main thread (elsewhere it does nothing). Ctrl-C held by `hold()` stays held."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    if not _holding and _main_thread_and_not_ignored():
        signal.signal(signal.SIGINT, _count_and_interrupt)
    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # Raised again once the callback has returned: asked for from another thread
            # a moment later (asked for from this one, or while this one waits for that
            # thread to start, it would be raised here, inside the hook, and lost again).
            _thread.start_new_thread(_interrupt_main_soon, ())
            return
        previous(unraisable)

    sys.unraisablehook = hook


def _interrupt_main_soon() -> None:
    time.sleep(REDELIVERY_SECONDS)
    _thread.interrupt_main()


@contextlib.contextmanager
def deferred():
    """Holds Ctrl-C until the block ends, then raises KeyboardInterrupt there: for importing
    extension modules, which an interrupt inside their initialisation can abort. Main thread
    only (elsewhere, or where SIGINT is ignored, it changes nothing)."""
    global _arrivals
    handler = signal.getsignal(signal.SIGINT)
    if (threading.current_thread() is not threading.main_thread()
            or handler in (signal.SIG_IGN, None)):
        yield
        return
    held = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        if held:
            _arrivals += 1
    if held:
        raise KeyboardInterrupt


def arrived() -> bool:
    """Whether Ctrl-C (SIGINT) has arrived since `install()`."""
    return _arrivals > 0
