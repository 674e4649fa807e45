"""Every device and every host: the same numbers on 1 and 8 devices and on 2 processes,
checkpoints that move between device counts, and runs that stop together.

The device count is fixed when JAX starts, so the runs on 3 or 8 fake CPU devices
(`JAX_NUM_CPU_DEVICES`) and the two-process runs (`jax.distributed` on localhost, 2 fake
devices each) happen in processes of their own (tests/devices_worker.py); what they
compute is compared with this process's one device. Fake devices share the same cores:
these tests check what is computed, not how fast.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests import devices_worker
from tests.helpers import (NUM_EXAMPLES, REPO_ROOT, RUN_FLAGS, full_state, run_in_process,
                           without_pre_batchnorm_biases)
from vae_jax import evaluate as evaluate_command
from vae_jax.parallel import DataParallel


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


def two_processes(workdir, *flags, evaluate=()):
    """The training command (then, with `evaluate` flags, the evaluation's) as 2 processes
    of 2 devices each; returns both (running)."""
    port = free_port()
    distributed = ["--coordinator-address", f"localhost:{port}", "--num-processes", 2,
                   "--distributed-timeout", 60]
    return [worker("train", *RUN_FLAGS, "--workdir", workdir, "--data-dir", f"{workdir}-data",
                   *distributed, "--process-id", index, *flags,
                   *(["--then-evaluate", "--workdir", workdir, *distributed, "--process-id",
                      index, *evaluate] if evaluate else []), devices=2, wait=False)
            for index in (0, 1)]


def finish(processes, timeout=600):
    """(return code, stdout, stderr) of each process, once they have ended."""
    outputs = [process.communicate(timeout=timeout) for process in processes]
    return [(process.returncode, *output) for process, output in zip(processes, outputs)]


def assert_trained_alike(workdir, expected_workdir, learning_rate=2e-3):
    """Two Adam runs agree as far as float32 rounding lets them: the train losses of every
    epoch, and the newest checkpoints' params, BatchNorm running variances, step and key.

    Adam divides each step by the gradient's own size, so where a gradient is tiny a
    rounding difference (a sum taken over devices in another order) becomes a difference
    of up to the learning rate per step (README, "What the parity tests guarantee"). So
    each weight may differ by at most a learning rate per step taken, and at most 1% of
    them by more than half of one: a wrong split of the data would move most of them.
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
    assert np.mean(differences > learning_rate / 2) < 0.01
    chex.assert_trees_all_equal(
        (trees["train_state"]["step"], trees["train_state"]["key"]),
        (expected["train_state"]["step"], expected["train_state"]["key"]))


@pytest.mark.slow(reason="a process with 8 fake devices, compiled for both meshes")
def test_eight_devices_compute_what_one_does(tmp_path):
    """A step, two epochs of each mode and an evaluation: on 8 devices (split batches,
    replicated state, checked by the worker) as on one, within float32 rounding."""
    result = worker(tmp_path / "eight.npz", devices=8)
    assert result.returncode == 0, result.stderr[-3000:]
    eight = dict(np.load(tmp_path / "eight.npz"))
    one = devices_worker.results(DataParallel.create())
    assert set(eight) == set(one)
    assert int(eight.pop("evaluate/devices")) == 8 and int(one.pop("evaluate/devices")) == 1
    for name, value in one.items():
        if "key" in name or name.endswith(("step", "active_units")):
            np.testing.assert_array_equal(eight[name], value, err_msg=name)
        else:
            np.testing.assert_allclose(eight[name], value, rtol=2e-5, atol=1e-5, err_msg=name)
    moved = np.abs(one["steps/['params']['decoder']['deconv2']['kernel']"]
                   - one["step/['params']['decoder']['deconv2']['kernel']"]).max()
    assert moved > 10 * 1e-5, "training must move the weights for the comparison to mean much"


@pytest.mark.slow(reason="trains in a process with 8 fake devices")
def test_a_checkpoint_moves_between_one_and_eight_devices(uninterrupted, tmp_path):
    """Epoch 1 on one device, epoch 2 on eight, epoch 3 on one again: the run ends where
    the run that never moved ends."""
    workdir = tmp_path / "moving"
    assert run_in_process(workdir, "--epochs", "1") == 0
    result = worker("train", *RUN_FLAGS, "--epochs", 2, "--workdir", workdir, "--data-dir",
                    f"{workdir}-data", devices=8)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training on cpu, 8 devices, 1 process" in result.stdout
    assert run_in_process(workdir) == 0
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [record["devices"] for record in records] == [1, 8, 1]
    assert_trained_alike(workdir, uninterrupted)


@pytest.mark.slow(reason="a process with 3 fake devices")
def test_batches_that_do_not_split_evenly_are_refused_naming_what_would(tmp_path):
    result = worker("train", *RUN_FLAGS, "--workdir", tmp_path / "run", "--data-dir",
                    tmp_path / "data", devices=3)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "train.py: error: --batch-size 16 on 3 devices: the batches of 16 images (48 in all) "
        "cannot be split evenly; use --devices 1 or 2, or a --batch-size such as 15 or 18")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow(reason="two processes through jax.distributed, three times")
def test_two_processes_train_resume_and_evaluate_like_one(uninterrupted, tmp_path, capsys):
    """Two epochs as two processes (4 devices), then the third, then an evaluation: the
    same weights and numbers as one process; process 0 alone prints and writes."""
    workdir = tmp_path / "two"
    evaluation = ["--iwae-samples", 3, "--batch-size", 10, "--json", "--no-progress"]
    for epochs, evaluate in (("2", ()), ("3", evaluation)):
        (code0, out0, err0), (code1, out1, err1) = finish(two_processes(
            workdir, "--epochs", epochs, evaluate=evaluate))
        assert (code0, code1) == (0, 0), err0[-2000:] + err1[-2000:]
        assert "4 devices, 2 processes" in out0 and out1 == ""
        # Only our lines: no "[Gloo] Rank 0 is connected to 1 peer ranks" between them.
        assert all(line.startswith(("resuming from", "training on", "epoch ", "{"))
                   for line in out0.splitlines()), out0
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [(record["epoch"], record["processes"]) for record in records] == [
        (1, 2), (2, 2), (3, 2)]
    assert_trained_alike(workdir, uninterrupted)
    two = json.loads(out0.strip().splitlines()[-1])
    assert (two["devices"], two["processes"]) == (4, 2)
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        assert evaluate_command.main([str(arg) for arg in ("--workdir", workdir, *evaluation)]) == 0
    one = json.loads(capsys.readouterr().out)
    for name in ("neg_elbo", "nll_iwae", "kl", "active_units"):
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, err_msg=name)


@pytest.mark.slow(reason="two processes, then a signal")
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    workdir = tmp_path / "signalled"
    processes = two_processes(workdir, "--epochs", "100")
    wait_for_epoch(workdir, 2, processes)
    processes[1].send_signal(signal.SIGTERM)
    results = finish(processes, timeout=120)
    assert [code for code, _, _ in results] == [143, 143], results[0][2][-2000:]
    steps = {err.strip().splitlines()[-1].split(" at step ")[1].split(";")[0]
             for _, _, err in results}
    assert len(steps) == 1  # the same step, and its checkpoint
    assert steps.pop() in os.listdir(workdir / "checkpoints")


@pytest.mark.slow(reason="two processes, then SIGKILL")
def test_a_killed_process_stops_the_other_with_one_line(tmp_path):
    workdir = tmp_path / "killed"
    processes = two_processes(workdir, "--epochs", "100")
    wait_for_epoch(workdir, 2, processes)
    processes[1].kill()
    start = time.monotonic()
    code, _, err = finish(processes[:1], timeout=120)[0]
    assert time.monotonic() - start < 30
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("train.py: error: another process of the run stopped or was killed")


def wait_for_epoch(workdir, epoch, processes, timeout=300):
    deadline = time.monotonic() + timeout
    metrics = workdir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            raise AssertionError(f"a process ended early: {processes[0].stderr.read()[-2000:]}")
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epoch:
            return
        time.sleep(0.2)
    raise AssertionError(f"epoch {epoch} did not come")


@pytest.mark.slow(reason="a process that waits for a peer that never comes")
def test_a_run_whose_processes_never_join_ends_with_one_line(tmp_path):
    """Process 0 of 2 started alone: one line naming the address and the process waited
    for, exit code 2, instead of JAX's SIGABRT with a C++ stack trace."""
    port = free_port()
    result = worker("train", *RUN_FLAGS, "--workdir", tmp_path / "run", "--data-dir",
                    tmp_path / "data", "--coordinator-address", f"localhost:{port}",
                    "--num-processes", 2, "--process-id", 0, "--distributed-timeout", 2,
                    devices=1)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"train.py: error: process 0 of 2 waited 2 s at localhost:{port} for process 1, which "
        "did not join; start every process with the same --coordinator-address and "
        "--num-processes, or raise --distributed-timeout"]


@pytest.mark.parametrize("address", ["nonsense", "localhost", "localhost:", ":1234",
                                     "localhost:http", "localhost:70000"])
def test_a_coordinator_address_that_is_not_host_port_is_one_line(address, capsys):
    from vae_jax import train
    status = train.main(["--coordinator-address", address, "--num-processes", "2",
                         "--process-id", "0", "--no-download"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert f"--coordinator-address {address!r}: expected HOST:PORT" in lines[0]


def test_no_batch_size_fits_when_the_images_do_not_divide_among_the_devices():
    """20 images on 3 devices: every batch size leaves a remainder; say so, and which
    device counts work."""
    parallel = DataParallel.create(1)
    object.__setattr__(parallel, "mesh", type("Mesh", (), {"devices": np.zeros(3)})())
    with pytest.raises(ValueError) as refused:
        parallel.check_batches(20, 8)
    assert str(refused.value).endswith(
        "cannot be split evenly; use --devices 1 (no --batch-size splits 20 images over 3 "
        "devices: 20 is not a multiple of 3)")


@pytest.mark.parametrize("num_examples, batch_size, devices, expected", [
    (60_000, 1024, 8, None), (60_000, 1024, 3, [1023, 1026]), (48, 16, 3, [15, 18])])
def test_usable_batch_sizes(num_examples, batch_size, devices, expected):
    from vae_jax.parallel import usable_batch_sizes
    if expected is None:
        assert batch_size % devices == 0 and (num_examples % batch_size) % devices == 0
    else:
        assert usable_batch_sizes(num_examples, batch_size, devices) == expected


def test_one_process_mesh_describes_itself():
    parallel = DataParallel.create()
    assert parallel.describe() == f"{jax.default_backend()}, 1 device, 1 process"
    with pytest.raises(Exception, match="--devices 2: there is only 1 device"):
        DataParallel.create(2)
