"""Many processes (hosts, or several processes on one machine): `jax.distributed`.

`initialize` runs `jax.distributed.initialize` before anything else touches JAX. Every
process loads the same data, computes the same global batch order and hands JAX the rows of
its own devices (`vae_jax.runtime.mesh`), so a run on many hosts sees the batches of a run
on one. Every process runs every computation and every checkpoint save and restore, in the
same order; process 0 alone writes files and prints.

When a process dies, the others stop with one line: their next collective fails
(`is_lost_peer`; the command skeleton, `vae_jax.commands.cli`, then calls `exit_now`).
A process that hangs without dying is found by JAX's coordination service, whose heartbeat
timeout (`HEARTBEAT_TIMEOUT_SECONDS`) ends the others JAX's way, with its own message; so
does the death of process 0, the coordinator.
"""

from __future__ import annotations

import os
import sys
import threading

import jax

from vae_jax.runtime import native_output
from vae_jax.runtime.errors import InputError

# JAX's coordination service takes a process that sent no heartbeat for this long for
# dead (JAX's default is 100 s).
HEARTBEAT_TIMEOUT_SECONDS = 40
# JAX's own limit for the processes to join exceeds --distributed-timeout by this much, so
# that `JoinDeadline` stops the process with one line before JAX aborts it.
JOIN_GRACE_SECONDS = 5


class DistributedError(InputError):
    """jax.distributed could not start, or was asked for with incomplete flags."""


def cluster_detected() -> bool:
    """Whether this process was launched as one of several by SLURM or Open MPI (what
    `jax.distributed.initialize()` finds without arguments). Cloud TPU pods need
    `--distributed`: JAX finds them through the TPU metadata server, not the environment."""
    slurm_tasks = os.environ.get("SLURM_NTASKS") or os.environ.get("SLURM_NPROCS")
    if "SLURM_JOB_ID" in os.environ and slurm_tasks and int(slurm_tasks) > 1:
        return True
    return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, force: bool = False,
               timeout_seconds: int = 120, prog: str | None = None) -> bool:
    """Starts `jax.distributed` when asked to (the three flags, or `force`) or when a
    cluster launched this process (`cluster_detected`); returns whether it did. Must run
    before any other JAX call. Raises DistributedError in one line when it cannot start;
    when the processes do not all join within `timeout_seconds`, ends the process with one
    line (`PROG: error: ...`, `prog` defaulting to the script's name) and exit code 2."""
    prog = prog or os.path.basename(sys.argv[0] or "vae-jax")
    given = [value is not None for value in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise DistributedError("--coordinator-address, --num-processes and --process-id go "
                               "together: give all three, or none")
    if jax.distributed.is_initialized():  # a second command in the same process
        return True
    if not (all(given) or force or cluster_detected()):
        return False
    if all(given) and not 0 <= process_id < num_processes:
        raise DistributedError(f"--process-id {process_id} must be in 0..{num_processes - 1} "
                               f"for --num-processes {num_processes}")
    if coordinator_address is not None:
        check_address(coordinator_address)
    # JAX aborts the process with a C++ stack trace when the processes do not all join in
    # time; `JoinDeadline` says so in one line and exits first (JAX's own limit is later).
    deadline = JoinDeadline(prog, timeout_seconds, coordinator_address, num_processes,
                            process_id)
    try:
        with deadline:
            jax.distributed.initialize(
                coordinator_address, num_processes, process_id,
                initialization_timeout=timeout_seconds + JOIN_GRACE_SECONDS,
                heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS)
    except Exception as error:  # noqa: BLE001 - jax raises several types here
        raise DistributedError(f"jax.distributed could not start: {type(error).__name__}: "
                               f"{' '.join(str(error).split())[:300]}") from None
    if jax.process_index() != 0:
        # Process 0 alone prints; the others' stdout would only carry the collectives'
        # own chatter (gloo's "Rank 3 is connected to 3 peer ranks").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    elif jax.process_count() > 1:
        native_output.python_only_stdout()  # process 0's lines, without gloo's
    return True


def check_address(address: str) -> None:
    """Raises DistributedError unless `address` reads HOST:PORT with a port in 1..65535."""
    host, colon, port = address.strip().rpartition(":")
    if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise DistributedError(f"--coordinator-address {address!r}: expected HOST:PORT, "
                               "process 0's host name or IP address and a free port, e.g. "
                               "10.0.0.1:12345")


class JoinDeadline:
    """While `jax.distributed.initialize` waits for the processes to join: after
    `seconds`, ends this process with one line naming the address and the processes
    waited for, and exit code 2 (a context manager; leaving it disarms the timer)."""

    def __init__(self, prog: str, seconds: float, address: str | None, count: int | None,
                 process: int | None):
        self.prog, self.seconds, self.address = prog, seconds, address
        self.count, self.process = count, process
        self.timer = threading.Timer(seconds, self._expire)
        self.timer.daemon = True

    def __enter__(self) -> "JoinDeadline":
        self.timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.timer.cancel()

    def message(self) -> str:
        where = f" at {self.address}" if self.address else ""
        if self.process is None or self.count is None:
            return (f"jax.distributed: the processes of the run did not all join within "
                    f"{self.seconds:g} s{where} (--distributed-timeout)")
        if self.process == 0:
            others = ("process 1, which did not join" if self.count == 2 else
                      f"processes 1-{self.count - 1}, not all of which joined")
            return (f"process 0 of {self.count} waited {self.seconds:g} s{where} for "
                    f"{others}; start every process with the same "
                    "--coordinator-address and --num-processes, or raise "
                    "--distributed-timeout")
        return (f"process {self.process} of {self.count} could not join the run{where} within "
                f"{self.seconds:g} s: process 0 (the coordinator) is not there or not all "
                "processes joined; start process 0 first, or raise --distributed-timeout")

    def _expire(self) -> None:
        exit_now(self.prog, self.message(), code=2)


def is_main_process() -> bool:
    """Process 0: the one that writes files and prints."""
    return jax.process_index() == 0


def is_lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another process of the run is
    gone (its connection closed), in a run of several processes."""
    return (jax.process_count() > 1 and isinstance(error, jax.errors.JaxRuntimeError))


def exit_now(prog: str, message: str, code: int = 1) -> None:
    """Ends a process of a multi-process run with one line, at once: JAX's own shutdown
    would first wait, for its heartbeat timeout, at a barrier the dead process never
    reaches, and then abort with a C++ stack trace."""
    sys.stdout.flush()
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    os._exit(code)
