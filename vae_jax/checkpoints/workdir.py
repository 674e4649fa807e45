"""A run's directory: who may write it, and what must hold before anything is written.

* One writer at a time: `exclusive(workdir, command)` holds an operating-system lock on
  `workdir/.lock` (`fcntl.flock`) for as long as a run writes there. The system releases it
  when the process ends however it ends, SIGKILL included, so a killed run never leaves a
  stale lock; a second run on the same directory is refused in one line that names the
  holder (its pid, host, command and start time, which the holder writes into the file).
* Two kinds of directory: a training run (`train.py`: checkpoints/, metrics.jsonl, a
  config.json with the run's settings) and saved variables (`save_variables`, e.g.
  `python -m vae_jax.commands.torch_port`: variables/ and a config.json with the model only). Each
  writer refuses the other's kind instead of overwriting its config.json.
* `require_writable` checks, before a run starts, every file and directory it will write.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import shutil
import socket
import sys
from typing import Iterator

from vae_jax.runtime.errors import InputError

# What a run's directory holds (each name defined here once).
CHECKPOINTS_DIR = "checkpoints"            # a training run's orbax checkpoints
QUARANTINE_DIR = "unreadable_checkpoints"  # damaged checkpoints, moved aside and kept
VARIABLES_DIR = "variables"                # variables saved by `save_variables`
CONFIG_FILE = "config.json"                # the model configuration (and a run's settings)
METRICS_FILE = "metrics.jsonl"             # one record per epoch
TENSORBOARD_DIR = "tensorboard"            # TensorBoard event files
LOCK_FILE = ".lock"                        # held by the process writing the directory

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no lock; see `exclusive`
    fcntl = None


class WorkdirBusy(InputError):
    """Another process holds the directory's lock."""


def check_name(workdir: str, flag: str = "--workdir") -> None:
    if not workdir or not workdir.strip():
        raise InputError(f"{flag} is empty; give a directory")


def require_writable(workdir: str, names: tuple[str, ...] = (), flag: str = "--workdir"
                     ) -> None:
    """Raises InputError unless `workdir` (or, while it does not exist, the nearest existing
    directory above it) is a writable directory, and so is each of `names` inside it that
    already exists."""
    check_name(workdir, flag)
    if os.path.islink(workdir) and not os.path.exists(workdir):
        raise InputError(f"{flag} {workdir} is a symbolic link to {os.readlink(workdir)}, "
                         "which does not exist")
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {workdir}: {existing} is not a writable directory")
    for name in names:
        path = os.path.join(workdir, name)
        if os.path.exists(path) and not os.access(
                path, os.W_OK | (os.X_OK if os.path.isdir(path) else 0)):
            raise InputError(f"{flag} {workdir}: {path} is not writable")


def has_checkpoints(workdir: str) -> bool:
    """Whether `workdir` holds a run's checkpoint (one to resume from)."""
    directory = os.path.join(workdir, CHECKPOINTS_DIR)
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def holds_training_run(workdir: str, config: dict) -> bool:
    """Whether `workdir` (whose config.json holds `config`) is a training run's."""
    return (os.path.isdir(os.path.join(workdir, CHECKPOINTS_DIR))
            or os.path.exists(os.path.join(workdir, METRICS_FILE)) or "seed" in config)


def holds_saved_variables(workdir: str) -> bool:
    """Whether `workdir` holds variables saved by `save_variables` and no training run."""
    return (os.path.isdir(os.path.join(workdir, VARIABLES_DIR))
            and not os.path.isdir(os.path.join(workdir, CHECKPOINTS_DIR)))


@contextlib.contextmanager
def exclusive(workdir: str, command: str) -> Iterator[None]:
    """Holds `workdir`'s lock while the body runs; raises WorkdirBusy when another process
    holds it. Creates `workdir` if needed. Without `fcntl` (not POSIX) the body runs
    unlocked."""
    os.makedirs(workdir, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = os.path.join(workdir, LOCK_FILE)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(f"--workdir {workdir} is in use by {_holder(descriptor)}; wait "
                              "for it to finish or stop it, or choose another --workdir"
                              ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _holder(descriptor: int) -> str:
    """Who holds the lock, as its holder wrote it into the lock file."""
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0).decode() or "{}")
        return (f"another run (pid {holder['pid']} on {holder['host']}, "
                f"`{holder['command']}`, started {holder['started']})")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "another run"


def command_line() -> str:
    """This process's command line, for the lock file."""
    return " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:300]


def refuse_json_constant(name: str):
    """`parse_constant` for `json.load`: NaN and Infinity are not JSON (a run never writes
    them), so a file that holds one is damaged."""
    raise ValueError(f"{name} is not a JSON number")


# What a run writes into its workdir, besides the epochs' PNG files.
RUN_DIRECTORIES = (CHECKPOINTS_DIR, QUARANTINE_DIR, TENSORBOARD_DIR)
RUN_OUTPUTS = (*RUN_DIRECTORIES, METRICS_FILE, CONFIG_FILE)


def check_workdir(workdir: str) -> None:
    """Raises InputError unless a run can write everything it writes in `workdir`, and
    `workdir` does not hold variables saved by `save_variables` (whose config.json the run
    would overwrite)."""
    require_writable(workdir, RUN_OUTPUTS)
    for name in RUN_OUTPUTS:
        path = os.path.join(workdir, name)
        wanted = "directory" if name in RUN_DIRECTORIES else "file"
        if os.path.lexists(path) and os.path.isdir(path) != (wanted == "directory"):
            raise InputError(f"--workdir {workdir}: {path} is not a {wanted}, as a run needs "
                             "it to be; move it away, or choose another --workdir")
    if holds_saved_variables(workdir):
        raise InputError(f"--workdir {workdir} holds saved variables (e.g. imported by "
                         "vae-jax-torch-port), not a training run; train in another --workdir")


def clear_run_outputs(workdir: str) -> None:
    """Deletes what a training run wrote into `workdir` (for --fresh --overwrite)."""
    for name in RUN_OUTPUTS:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    for path in glob.glob(os.path.join(glob.escape(workdir), "*_epoch*.png")):
        os.remove(path)
