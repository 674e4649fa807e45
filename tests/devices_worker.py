"""What must not depend on the device count, computed on this process's devices.

`tests/test_parallel.py` runs `results(...)` in its own process (one CPU device) and, as
`python -m tests.devices_worker OUT.npz`, in a process with 8 fake CPU devices
(`JAX_NUM_CPU_DEVICES=8`, which must be set before JAX starts), and compares the two.
The worker also checks, where it runs, that the arrays really are split and replicated
as they should be, and that the compile-count guards hold.

`python -m tests.devices_worker train FLAGS... [--then-evaluate FLAGS...]` runs the
training command (then the evaluation's) on the mock data of tests/helpers.py, in a
process of its own (several, with the distributed flags).
"""

import sys

import jax
import numpy as np
import optax
import tensorflow_datasets as tfds

from tests.helpers import NUM_EXAMPLES
from vae_jax import VAE
from vae_jax.commands import evaluate as evaluate_command
from vae_jax.commands import train as train_command
from vae_jax.evaluation import likelihood
from vae_jax.runtime.mesh import DataParallel, host
from vae_jax.training import loop, steps, train_state

NUM_IMAGES, BATCH = 40, 16  # batches of 16, 16 and 8: all divide among 8 devices


def images() -> np.ndarray:
    return np.random.default_rng(1).uniform(size=(NUM_IMAGES, 28, 28, 1)).astype(np.float32)


def initial_state():
    """Plain SGD: Adam would turn the rounding noise in the zero gradients of the biases
    before BatchNorm into steps of the learning rate's size (see tests/helpers.py)."""
    keys = train_state.RunKeys.from_seed(0)
    return train_state.create_train_state(VAE(), optax.sgd(1e-5), keys.init, keys.train)


def check_placement(parallel: DataParallel, state, batch) -> None:
    """The state replicated on every device; the batch split along its first axis."""
    assert all(leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set)
               == parallel.device_count for leaf in jax.tree.leaves(state.params))
    assert batch.sharding.spec == jax.sharding.PartitionSpec("data")
    shard_rows = {shard.data.shape[0] for shard in batch.addressable_shards}
    assert shard_rows == {batch.shape[0] // parallel.device_count}, shard_rows


def results(parallel: DataParallel) -> dict[str, np.ndarray]:
    """A step, two epochs of each mode, and an evaluation, as flat numpy arrays."""
    data = images()
    out = {}
    step = steps.make_train_step(max_traces=2, parallel=parallel)
    batch = parallel.split(data[:BATCH])
    initial = initial_state()  # one static part (model, optimizer): one compilation
    state = parallel.replicate(initial)
    check_placement(parallel, state, batch)
    state, metrics = step(state, batch)
    check_placement(parallel, state, batch)
    out.update(flatten("step", state, metrics))

    state = parallel.replicate(initial)
    for epoch in (1, 2):
        state, sums = loop.run_epoch_steps(step, state, data, jax.random.fold_in(
            jax.random.key(7), epoch), BATCH, place=parallel.split)
    out.update(flatten("steps", state, sums))

    scan = steps.make_train_epoch(BATCH, max_traces=1, parallel=parallel)
    state = parallel.replicate(initial)
    device_data = parallel.replicate(data)
    for epoch in (1, 2):
        state, sums = scan(state, device_data, parallel.replicate(
            jax.random.fold_in(jax.random.key(7), epoch)))
    out.update(flatten("scan", state, sums))

    variables = host(state.variables)
    result = likelihood.evaluate_model(VAE(), variables, data[:20], seed=3, iwae_samples=6,
                                       batch_size=5, binarize_mode="dynamic", parallel=parallel)
    for name in ("neg_elbo", "nll_iwae", "kl", "active_units"):
        out[f"evaluate/{name}"] = np.asarray(result[name])
    out["evaluate/devices"] = np.asarray(result["devices"])
    return out


def flatten(prefix: str, state, metrics) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(
        host({"params": state.params, "batch_stats": state.batch_stats, "step": state.step,
              "key": jax.random.key_data(state.key), "metrics": metrics}))
    return {f"{prefix}/{jax.tree_util.keystr(path)}": np.asarray(leaf) for path, leaf in leaves}


if __name__ == "__main__":
    if sys.argv[1] == "train":  # train FLAGS... [--then-evaluate FLAGS...]
        flags, _, evaluate_flags = " ".join(sys.argv[2:]).partition(" --then-evaluate ")
        with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
            status = train_command.main(flags.split())
            if status == 0 and evaluate_flags:
                status = evaluate_command.main(evaluate_flags.split())
        sys.exit(status)
    np.savez(sys.argv[1], **results(DataParallel.create()))
