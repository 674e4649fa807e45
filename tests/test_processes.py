"""Every host: two processes through `jax.distributed` (on localhost, 2 fake devices
each, tests/devices_worker.py) train, resume and evaluate as one process does, stop
together on a signal or a killed peer, and refuse in one line what cannot start.
"""

import json
import os
import signal
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.helpers import NUM_EXAMPLES, RUN_FLAGS, assert_trained_alike, free_port, worker
from vae_jax.commands import evaluate as evaluate_command


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
        assert all(line.startswith(("resuming the run in", "training in", "epoch ", "{",
                                    "wrote ", "next: "))
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
    from vae_jax.commands import train as train_command
    status = train_command.main(["--coordinator-address", address, "--num-processes", "2",
                                 "--process-id", "0", "--no-download"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert f"--coordinator-address {address!r}: expected HOST:PORT" in lines[0]
