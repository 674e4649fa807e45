"""What several test modules share: paths, the test configuration, saved models, and the
worker processes of the device and process tests."""

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import vae_jax
from vae_jax.checkpoints import run_checkpoints
from vae_jax.checkpoints.workdir import LOCK_FILE
from vae_jax.commands import train as train_command
from vae_jax.model.vae import variable_shapes
from vae_jax.training.config import TrainConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_CONFIG = {"z_dim": 32, "im_chan": 1}


def load_repository_module(*path: str):
    """A Python file of the repository that is not in the package (a script, a Sphinx
    extension), imported as a module: `load_repository_module("scripts", "x.py")`."""
    spec = importlib.util.spec_from_file_location(
        os.path.splitext(path[-1])[0], os.path.join(REPO_ROOT, *path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Two convolution implementations agree within float32 rounding (tests/test_layers.py,
# tests/test_winograd.py).
CONV_TOLERANCE = dict(rtol=1e-5, atol=1e-5)


@contextlib.contextmanager
def ctrl_c_reaches_children():
    """Children started inside see SIGINT at its default disposition, which Python turns into
    KeyboardInterrupt. A test run from a script's background job inherits an ignored SIGINT
    (bash ignores it there), which its children would inherit too; a handled one is reset to
    the default by exec. (A `preexec_fn` would do it in the child, but forks a threaded JAX.)"""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def tiny_config(**overrides) -> TrainConfig:
    """The test configuration: the course's model on a few mock images, small batches.

    Like flax's examples' configs/test.py: everything that makes a run fast, nothing that
    changes what it computes. Pair it with `tfds.testing.mock_data`.
    """
    settings = dict(epochs=1, batch_size=16, seed=5)
    return TrainConfig(**{**settings, **overrides})


def real_mnist_dir():
    """$TFDS_DATA_DIR when it holds the prepared mnist, else None."""
    data_dir = os.environ.get("TFDS_DATA_DIR")
    if data_dir and os.path.isdir(os.path.join(data_dir, "mnist")):
        return data_dir
    return None


def import_torch():
    """torch, for the tests of the side-by-side benchmark: skipped where it is not installed,
    unless $VAE_JAX_REQUIRE_TORCH is set (`.ci/run` installs it), where its absence fails."""
    if os.environ.get("VAE_JAX_REQUIRE_TORCH"):
        import torch
        return torch
    return pytest.importorskip("torch")


requires_real_mnist = pytest.mark.skipif(
    real_mnist_dir() is None, reason="TFDS_DATA_DIR does not hold the prepared mnist")


def untrained_variables(seed: int = 0) -> dict:
    """Variables of an untrained VAE (z_dim 32) without compiling `VAE().init`.

    Kernels are uniform in ±1/sqrt(fan_in), biases 0, BatchNorm scale 1 and its running
    statistics mean 0, var 1.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            bound = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
            return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
        value = 1.0 if name in ("scale", "var") else 0.0
        return np.full(leaf.shape, value, np.float32)

    return jax.tree_util.tree_map_with_path(fill, variable_shapes(vae_jax.VAE()))


def save_untrained(workdir) -> str:
    """Saves untrained variables and config.json into `workdir`; returns it as a string."""
    vae_jax.save_variables(str(workdir), untrained_variables(), MODEL_CONFIG)
    return str(workdir)


# The run that several test modules resume, damage and compare against: 3 epochs of 3
# batches of 16 mock images (`tfds.testing.mock_data`), checkpoints at steps 3, 6 and 9.
NUM_EXAMPLES = 48
RUN_FLAGS = ["--epochs", "3", "--batch-size", "16", "--no-progress", "--seed", "5"]


def run_in_process(workdir, *extra) -> int:
    """The training command on the mock data, in this process; returns its exit code."""
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        return train_command.main([*RUN_FLAGS, "--workdir", str(workdir),
                                   "--data-dir", str(workdir) + "-data", *extra])


def full_state(workdir):
    """(step, every array) of the newest checkpoint: variables, optimizer state, step, key."""
    with run_checkpoints.RunCheckpoints(str(workdir)) as run:
        return run.restore_newest(("variables", "train_state"), set_aside=False)


class Killed(BaseException):
    """The process dying on the spot, as with SIGKILL: no handler of the run catches it."""


@contextlib.contextmanager
def killed_after_saving(step: int):
    """Runs inside die (`Killed`) right after their checkpoint of `step` is saved: what a
    SIGKILL at that moment leaves, in this process."""
    save = run_checkpoints.RunCheckpoints.save

    def save_then_die(self, saved_step, *args, **kwargs):
        save(self, saved_step, *args, **kwargs)
        if saved_step == step:
            raise Killed

    run_checkpoints.RunCheckpoints.save = save_then_die
    try:
        with pytest.raises(Killed):
            yield
    finally:
        run_checkpoints.RunCheckpoints.save = save


def assert_resumed_bitwise(workdir, expected_workdir) -> None:
    """The newest checkpoint of `workdir` (every array) and its epochs' train losses equal
    `expected_workdir`'s, bit for bit."""
    (step, resumed), (expected_step, expected) = full_state(workdir), full_state(
        expected_workdir)
    assert step == expected_step
    chex.assert_trees_all_equal(resumed, expected)
    losses = [[json.loads(line)["train_loss"] for line in open(directory / "metrics.jsonl")]
              for directory in (workdir, expected_workdir)]
    assert losses[0] == losses[1]


def snapshot(directory):
    """Every saved file's size and modification time under `directory` (not the lock file,
    which a run holds while it checks the directory, and which holds no data)."""
    return {os.path.join(root, name): (os.stat(os.path.join(root, name)).st_size,
                                       os.stat(os.path.join(root, name)).st_mtime_ns)
            for root, _, names in os.walk(directory) for name in names if name != LOCK_FILE}


# A convolution's bias right before BatchNorm is cancelled by the mean subtraction: its true
# gradient is 0, so the computed one is float rounding noise (~1e-9) that Adam normalises
# into steps of up to the learning rate. Those biases are compared for finiteness only.
PRE_BATCHNORM_LAYERS = (("encoder", "conv1"), ("encoder", "conv2"), ("decoder", "deconv1"),
                        ("decoder", "deconv2"), ("decoder", "deconv3"))


def without_pre_batchnorm_biases(params):
    params = jax.tree.map(np.asarray, params)
    params = {part: dict(layers) for part, layers in params.items()}
    for part, layer in PRE_BATCHNORM_LAYERS:
        params[part][layer] = {"kernel": params[part][layer]["kernel"]}
    return params


def assert_states_close(first, second, **tolerance):
    chex.assert_trees_all_close(
        (without_pre_batchnorm_biases(first.params), first.batch_stats, first.step),
        (without_pre_batchnorm_biases(second.params), second.batch_stats, second.step),
        **tolerance)
    chex.assert_tree_all_finite((first.params, second.params))
    chex.assert_trees_all_equal(jax.random.key_data(first.key),
                                jax.random.key_data(second.key))


def conv_inputs(seed, batch, size, in_channels, out_channels, kernel, out_size):
    """x, kernel and a cotangent for the output of a square convolution layer, scaled so
    that outputs are O(1): (batch, size, size, in), (kernel, kernel, in, out),
    (batch, out_size, out_size, out)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (batch, size, size, in_channels)).astype(np.float32)
    w = (rng.uniform(-1, 1, (kernel, kernel, in_channels, out_channels))
         / np.sqrt(in_channels * kernel * kernel)).astype(np.float32)
    cotangent = rng.uniform(-1, 1, (batch, out_size, out_size, out_channels)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(w), jnp.asarray(cotangent)


def value_and_vjp(fn, stride):
    """jitted (x, w, cotangent) -> (fn(x, w, stride), d/dx, d/dw) of <cotangent, fn>."""

    @jax.jit
    def run(x, w, cotangent):
        y, vjp = jax.vjp(lambda x, w: fn(x, w, stride), x, w)
        return (y, *vjp(cotangent))

    return run


def assert_same_value_and_grads(actual, expected, **tolerance):
    """`actual` and `expected`, (output, d/dx, d/dkernel), agree (CONV_TOLERANCE unless told)."""
    for name, a, b in zip(("output", "d/dx", "d/dkernel"), actual, expected):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), err_msg=name,
                                   **(tolerance or CONV_TOLERANCE))


# --- other processes: fake devices and jax.distributed (tests/devices_worker.py) ---------

def worker(*args, devices, wait=True, **popen):
    """`python -m tests.devices_worker ARGS` with `devices` fake CPU devices."""
    command = [sys.executable, "-m", "tests.devices_worker", *map(str, args)]
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices)}
    if wait:
        return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def assert_trained_alike(workdir, expected_workdir, learning_rate=2e-3):
    """Two Adam runs agree as far as float32 rounding lets them: the train losses of every
    epoch, and the newest checkpoints' params, BatchNorm running variances, step and key.

    Adam divides each step by the gradient's own size, so where a gradient is tiny a
    rounding difference (a sum taken over devices in another order) becomes a difference
    of up to the learning rate per step (docs/guides/pytorch.md, "What the parity tests
    guarantee"). So
    a few weights may differ by up to a learning rate per step, the median by at most a
    twentieth of one, and at most 1% of them by more than half of one: a wrong split of the
    data would move most of them. How far rounding carries depends on the CPU's kernels
    (measured 2026-12-07, 9 steps: on the Intel AMX machine, 8 devices against 1, max
    2.4e-7; two processes, max 1.7e-4, 99th percentile 1.8e-6; DReG on 8 devices, max
    4.0e-3 = 2 lr, 99th percentile 1.1e-4; on an AVX2-only AMD EPYC, two processes, max
    7.2e-3 = 3.6 lr, median 4.1e-5, 99th percentile 5.0e-4, 0.15% above lr/2).
    Left out: the biases of the convolutions before a BatchNorm, whose gradient is all
    rounding (tests/helpers.py), and the running means, which carry those biases along.
    """
    losses = [[json.loads(line)["train_loss"] for line in open(directory / "metrics.jsonl")]
              for directory in (workdir, expected_workdir)]
    np.testing.assert_allclose(*losses, rtol=2e-4)  # 5e-5 seen after 9 steps, 4 devices
    (step, trees), (expected_step, expected) = full_state(workdir), full_state(expected_workdir)
    assert step == expected_step

    def compared(variables):
        return jax.tree.leaves((without_pre_batchnorm_biases(variables["params"]),
                                [stats["var"] for stats in jax.tree.leaves(
                                    variables["batch_stats"], is_leaf=lambda n: "var" in n)]))

    differences = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() for a, b in zip(
        compared(trees["variables"]), compared(expected["variables"]))])
    assert differences.max() <= step * learning_rate
    assert np.median(differences) <= learning_rate / 20
    assert np.mean(differences > learning_rate / 2) < 0.01
    chex.assert_trees_all_equal(
        (trees["train_state"]["step"], trees["train_state"]["key"]),
        (expected["train_state"]["step"], expected["train_state"]["key"]))
