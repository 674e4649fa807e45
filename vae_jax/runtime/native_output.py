"""Native libraries' log lines kept off the user's screen, their errors kept on it.

Two guards, for the two streams:

TensorFlow (which tfds reads data with) writes lines to file descriptor 2 from C++ when it
loads and while it reads: absl's "All log messages before absl::InitializeLog()", oneDNN's
and the CPU feature guard's notices on CPUs with AVX-512 or AMX, `W...` lines about
partly read caches. Which lines, and whether `TF_CPP_MIN_LOG_LEVEL` silences them, depends
on the TensorFlow version and the CPU. `filtered()` therefore does not name them: while its
body runs, descriptor 2 goes into a temporary file (Python's own `sys.stderr`, our
messages and warnings, still reaches the screen), and afterwards only the captured lines
that are errors (`is_error_line`) are passed on; a failed import raises as usual.

In a run of several processes, the collectives' library (gloo) prints "[Gloo] Rank 0 is
connected to 1 peer ranks ..." on descriptor 1 from C++. `python_only_stdout()` sends
descriptor 1 to /dev/null for good and gives Python's `sys.stdout` a descriptor of its own
on the real output: what the project prints still arrives, in order.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from typing import Iterator

STDOUT_FD, STDERR_FD = 1, 2
# A glog/absl line starts with its severity (I, W, E or F) and the date: "E1206 01:00:00..."
_GLOG_LINE = re.compile(r"^([IWEF])\d{4} ")
# Any other line is an error's when it says so (a Python traceback, a C++ library's "Error").
_ERROR_WORD = re.compile(r"\b(?:Error|ERROR|FATAL|Fatal|Traceback)\b")


def is_error_line(line: str) -> bool:
    """Whether a captured native log line reports an error (and so reaches the user): a
    glog line of severity E or F, or another line that names an error."""
    glog = _GLOG_LINE.match(line)
    if glog:
        return glog.group(1) in "EF"
    return bool(_ERROR_WORD.search(line))


@contextlib.contextmanager
def filtered(stream=None) -> Iterator[None]:
    """While the body runs, what native code writes to descriptor 2 is captured; afterwards
    its error lines (`is_error_line`) are written to `stream` (default: `sys.stderr`) and the
    rest dropped. Python's `sys.stderr` keeps reaching the real descriptor 2 meanwhile.

    Nests (an inner capture's error lines reach the screen) and does nothing where
    descriptor 2 cannot be redirected.
    """
    for open_stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            open_stream.flush()
    try:
        saved = os.dup(STDERR_FD)
    except OSError:  # no descriptor 2 (a service without one): nothing to keep off it
        yield
        return
    python_stderr = sys.stderr
    capture = tempfile.TemporaryFile()
    try:
        if _writes_to_descriptor(python_stderr):
            sys.stderr = _stream_to(saved, python_stderr)
        os.dup2(capture.fileno(), STDERR_FD)
        yield
    finally:
        sys.stderr = python_stderr
        os.dup2(saved, STDERR_FD)
        os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", errors="replace")
        capture.close()
        errors = [line for line in text.splitlines() if is_error_line(line)]
        if errors:
            print("\n".join(errors), file=stream or sys.stderr, flush=True)


def python_only_stdout() -> bool:
    """From now on, only Python's `sys.stdout` reaches the process's standard output:
    descriptor 1, where native libraries print, goes to /dev/null. Returns whether it did
    (not where `sys.stdout` is not descriptor 1: pytest's capture, a notebook)."""
    if not _writes_to_descriptor(sys.stdout, STDOUT_FD):
        return False
    sys.stdout.flush()
    own = os.dup(STDOUT_FD)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, STDOUT_FD)
    os.close(null)
    sys.stdout = io.TextIOWrapper(os.fdopen(own, "wb", buffering=0),
                                  encoding=sys.stdout.encoding, errors=sys.stdout.errors,
                                  line_buffering=True, write_through=True)
    return True


_streams: dict[tuple[int, int], io.TextIOWrapper] = {}


def _stream_to(descriptor: int, like) -> io.TextIOWrapper:
    """A text stream on a duplicate of `descriptor` (encoded like the stream `like`), one
    per file it leads to. Never closed: a logging handler made while it stood in for
    `sys.stderr` (TensorFlow makes one when it loads) keeps writing to it afterwards."""
    status = os.fstat(descriptor)
    target = (status.st_dev, status.st_ino)
    if target not in _streams:
        _streams[target] = io.TextIOWrapper(
            os.fdopen(os.dup(descriptor), "wb", buffering=0),
            encoding=getattr(like, "encoding", None), errors="backslashreplace",
            line_buffering=True, write_through=True)
    return _streams[target]


def _writes_to_descriptor(stream, descriptor: int = STDERR_FD) -> bool:
    """Whether a Python text stream writes to `descriptor` (not pytest's or Jupyter's own)."""
    try:
        return stream is not None and stream.fileno() == descriptor
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False

