"""Every device of every host as one data-parallel mesh, and arrays on and off it.

One mesh, one axis: a run lays its devices (`--devices N`: the first N, else all) out as a
1-D `jax.sharding.Mesh` with the axis "data". Parameters, optimizer state and BatchNorm
statistics are replicated; every batch is split along its first axis; a step is one
`jax.jit` program (SPMD) in which XLA inserts the all-reduces. BatchNorm's batch statistics
are therefore those of the global batch, exactly as one device computes them, and the
numbers do not depend on the device count (float32 rounding aside). The mesh's axes are
*Auto* (`jax.make_mesh` would make them Explicit, under which the "matmul" convolutions'
backward pass does not trace). With many processes (`vae_jax.runtime.distributed`), each
hands JAX the rows of its own devices (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vae_jax.runtime.errors import InputError

DATA_AXIS = "data"


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
