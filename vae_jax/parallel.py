"""Every device of every host: a data-parallel mesh, and `jax.distributed` across processes.

One mesh, one axis: a run lays its devices (`--devices N`: the first N, else all) out as a
1-D `jax.sharding.Mesh` with the axis "data". Parameters, optimizer state and BatchNorm
statistics are replicated; every batch is split along its first axis; a step is one
`jax.jit` program (SPMD) in which XLA inserts the all-reduces. BatchNorm's batch statistics
are therefore those of the global batch, exactly as one device computes them, and the
numbers do not depend on the device count (float32 rounding aside). The mesh's axes are
*Auto* (`jax.make_mesh` would make them Explicit, under which the "matmul" convolutions'
backward pass does not trace).

Many processes (hosts, or several processes on one machine): `initialize` runs
`jax.distributed.initialize` before anything else touches JAX. Every process loads the
same data, computes the same global batch order and hands JAX the rows of its own devices
(`jax.make_array_from_process_local_data`), so a run on many hosts sees the batches of a
run on one. Every process runs every computation and every checkpoint save and restore,
in the same order; process 0 alone writes files and prints. When a process dies, the
others stop with one line within seconds (their next collective fails, or the watchdog
misses its heartbeat), instead of waiting out JAX's own timeouts and dying with a C++
stack trace; only the death of process 0, the coordinator, still ends them JAX's way.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import sys
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vae_jax import native_output
from vae_jax.errors import InputError

DATA_AXIS = "data"
# A process whose heartbeat is older than this is taken for dead (the watchdog's limit);
# JAX's own coordination service gets a longer one, so that the watchdog speaks first.
PEER_TIMEOUT_SECONDS = 10
HEARTBEAT_SECONDS = 1.0
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
        # When a process dies, the survivors stop with one line each (`is_lost_peer`, the
        # `Watchdog`) before the coordination service's heartbeat timeout, four times the
        # watchdog's, would abort them with stack traces. (The coordinator, process 0, is
        # the exception: when it dies, JAX's client aborts the others at once, with its own
        # message; no callback for that is open to Python.)
        with deadline:
            jax.distributed.initialize(
                coordinator_address, num_processes, process_id,
                initialization_timeout=timeout_seconds + JOIN_GRACE_SECONDS,
                heartbeat_timeout_seconds=4 * PEER_TIMEOUT_SECONDS)
    except Exception as error:  # noqa: BLE001 - jax raises several types here
        raise DistributedError(f"jax.distributed could not start: {type(error).__name__}: "
                               f"{' '.join(str(error).split())[:300]}") from None
    if jax.process_index() != 0:
        # Process 0 alone prints; the others' stdout would only carry the collectives'
        # own chatter (gloo's "Rank 3 is connected to 3 peer ranks").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    elif jax.process_count() > 1:
        native_output.python_only_stdout()  # process 0's lines, without gloo's
    if jax.process_count() > 1:
        watchdog = Watchdog(prog=prog)
        watchdog.start()
        # atexit runs the newest first: the watchdog stops before jax.distributed shuts
        # down, so that a normal end is not taken for a dead coordinator.
        atexit.register(watchdog.stop)
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


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """The mesh a computation runs on, and the ways arrays go on and off it."""

    mesh: Mesh

    @classmethod
    def create(cls, num_devices: int | None = None) -> "DataParallel":
        """A mesh over the first `num_devices` devices (None or 0: all of them)."""
        devices = jax.devices()
        if num_devices:
            if num_devices > len(devices):
                count = (f"are only {len(devices)} devices" if len(devices) > 1
                         else "is only 1 device")
                raise InputError(f"--devices {num_devices}: there {count} ({devices[0].platform}, "
                                 f"{jax.process_count()} process(es))")
            devices = devices[:num_devices]
        return cls(Mesh(np.array(devices), (DATA_AXIS,)))

    @property
    def device_count(self) -> int:
        return self.mesh.devices.size

    @property
    def process_count(self) -> int:
        return len({device.process_index for device in self.mesh.devices.flat})

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch(self) -> NamedSharding:
        """Split along the first axis over the devices."""
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    def describe(self) -> str:
        """e.g. "cpu, 8 devices, 1 process"."""
        devices, processes = self.device_count, self.process_count
        return (f"{self.mesh.devices.flat[0].platform}, {devices} device"
                f"{'s' * (devices != 1)}, {processes} process{'es' * (processes != 1)}")

    def replicate(self, tree):
        """`tree` (the same values in every process) replicated on every device. PRNG key
        arrays stay key arrays."""
        def put(leaf):
            if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
                return jax.random.wrap_key_data(put(jax.random.key_data(leaf)),
                                                impl=jax.random.key_impl(leaf))
            if isinstance(leaf, jax.Array) and leaf.sharding == self.replicated:
                return leaf
            return jax.make_array_from_process_local_data(self.replicated, to_host(leaf))
        return jax.tree.map(put, tree)

    def split(self, batch: np.ndarray) -> jax.Array:
        """A global batch (the same rows in every process) split over the devices: each
        process hands JAX only the rows of its own devices."""
        rows = self.local_rows(batch.shape[0])
        return jax.make_array_from_process_local_data(self.batch, batch[rows], batch.shape)

    def local_rows(self, num_rows: int) -> slice:
        """The rows of a split batch that this process's devices hold (contiguous)."""
        index = self.batch.addressable_devices_indices_map((num_rows,))
        starts = [entry[0].start or 0 for entry in index.values()]
        stops = [num_rows if entry[0].stop is None else entry[0].stop for entry in index.values()]
        return slice(min(starts), max(stops))

    def check_batches(self, num_examples: int, batch_size: int) -> None:
        """Raises InputError unless every batch of an epoch (the full ones and the last,
        smaller one) divides evenly among the devices, naming device counts and batch
        sizes that would."""
        sizes = {min(batch_size, num_examples), num_examples % batch_size or batch_size}
        devices = self.device_count
        if all(size % devices == 0 for size in sizes):
            return
        common = math.gcd(*sizes)
        counts = [str(count) for count in range(1, len(jax.devices()) + 1) if common % count == 0]
        suggestions = usable_batch_sizes(num_examples, batch_size, devices)
        batch_sizes = (f", or a --batch-size such as {' or '.join(map(str, suggestions))}"
                       if suggestions else
                       f" (no --batch-size splits {num_examples} images over {devices} "
                       f"devices: {num_examples} is not a multiple of {devices})")
        raise InputError(
            f"--batch-size {batch_size} on {devices} devices: the batches of "
            f"{' and '.join(str(size) for size in sorted(sizes, reverse=True))} images "
            f"({num_examples} in all) cannot be split evenly; use --devices "
            f"{' or '.join(counts)}{batch_sizes}")

    def gather(self, array: jax.Array) -> np.ndarray:
        """The whole of a (possibly split, possibly multi-process) array on this host."""
        return to_host(array)



def any_process(flag: bool) -> bool:
    """Whether `flag` is true in any process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def barrier(name: str) -> None:
    """Waits until every process gets here (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def to_host(leaf) -> np.ndarray:
    """A leaf's values as a numpy array on this host: a replicated array's local copy, a
    split one gathered from every process."""
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
        return np.asarray(leaf)
    if leaf.sharding.is_fully_replicated:
        return np.asarray(leaf.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))


def host(tree):
    """`to_host` of every leaf of a tree."""
    return jax.tree.map(to_host, tree)


def usable_batch_sizes(num_examples: int, batch_size: int, devices: int) -> list[int]:
    """The batch sizes nearest to `batch_size` (one below, one above, where they exist)
    whose full and last batches both divide among `devices`."""
    def fits(size):
        return size % devices == 0 and (num_examples % size) % devices == 0

    below = next((size for size in range(batch_size - 1, 0, -1) if fits(size)), None)
    above = next((size for size in range(batch_size + 1, num_examples + 1) if fits(size)), None)
    return [size for size in (below, above) if size is not None]


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


class Watchdog(threading.Thread):
    """Stops this process with one line when another process of the run stops answering.

    Every process writes a heartbeat into jax.distributed's key-value store (the client
    that orbax also uses for its barriers) each HEARTBEAT_SECONDS and reads the others'. A
    heartbeat that has not changed for PEER_TIMEOUT_SECONDS, or a store that is gone (the
    coordinator, process 0, died), ends this process with `PROG: error: ...` and exit code
    1. Without it, a surviving process waits in its next collective until JAX's own timeout
    and then aborts with a C++ stack trace.
    """

    def __init__(self, prog: str):
        super().__init__(name="vae-jax-watchdog", daemon=True)
        self.prog = prog
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        from jax._src import distributed  # the client orbax uses for its barriers too
        client = distributed.global_state.client
        if client is None:
            return
        me, count = jax.process_index(), jax.process_count()
        seen: dict[int, tuple[str, float]] = {}
        beat = 0
        while not self.stopping.is_set():
            beat += 1
            try:
                client.key_value_set(f"vae_jax/heartbeat/{me}", str(beat), allow_overwrite=True)
                values = dict(client.key_value_dir_get("vae_jax/heartbeat/"))
            except Exception:  # noqa: BLE001 - the coordination service is gone
                self._stop(f"lost the connection to process 0, the coordinator (it stopped "
                           f"or was killed); stopping process {me} too")
                return
            now = time.monotonic()
            for process in range(count):
                value = values.get(f"vae_jax/heartbeat/{process}")
                if process == me or value is None:
                    continue
                if seen.get(process, (None,))[0] != value:
                    seen[process] = (value, now)
                elif now - seen[process][1] > PEER_TIMEOUT_SECONDS:
                    self._stop(f"process {process} stopped answering for "
                               f"{PEER_TIMEOUT_SECONDS} s (it stopped or was killed); "
                               f"stopping process {me} too")
                    return
            time.sleep(HEARTBEAT_SECONDS)

    def _stop(self, message: str) -> None:
        if not self.stopping.is_set():  # else the process is ending anyway
            exit_now(self.prog, message)
