"""Checkpoints, exact resume after a crash, signals, and refusals that leave a run intact."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import vae_jax
from tests.helpers import (
    NUM_EXAMPLES,
    REPO_ROOT,
    RUN_FLAGS,
    assert_resumed_bitwise,
    full_state,
    killed_after_saving,
    run_in_process,
    snapshot,
    tiny_config,
    untrained_variables,
)
from tests.test_faults import read_only
from vae_jax.checkpoints import run_checkpoints
from vae_jax.commands import train as train_command
from vae_jax.runtime.errors import NonFiniteLossError
from vae_jax.training import loop

# Runs the training command in a child process (signals and SIGKILL need a real process)
# on the same mock data the tests use in-process.
CHILD = """
import sys
import tensorflow_datasets as tfds
from vae_jax.commands.train import main
with tfds.testing.mock_data(num_examples={n}):
    sys.exit(main(sys.argv[1:]))
""".format(n=NUM_EXAMPLES)


def start_child(workdir, *extra):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *RUN_FLAGS, "--workdir", str(workdir),
         "--data-dir", str(workdir) + "-data", *extra],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(workdir, process, at_least_step, timeout=300):
    directory = os.path.join(workdir, "checkpoints")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"child ended early: {process.stderr.read()[-2000:]}")
        if os.path.isdir(directory) and any(
                name.isdigit() and int(name) >= at_least_step for name in os.listdir(directory)):
            return
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_checkpoint_holds_the_whole_train_state(uninterrupted):
    step, trees = full_state(uninterrupted)
    assert step == 9 and int(trees["train_state"]["step"]) == 9
    assert set(trees["train_state"]) == {"opt_state", "step", "key", "epoch_sums"}
    assert sorted(int(name) for name in os.listdir(uninterrupted / "checkpoints")) == [3, 6, 9]
    chex.assert_trees_all_equal(vae_jax.load_variables(str(uninterrupted)),
                                jax.tree.map(np.asarray, trees["variables"]))


@pytest.mark.slow(reason="a training subprocess, SIGKILLed")
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(uninterrupted, tmp_path):
    workdir = tmp_path / "killed"
    child = start_child(workdir, "--checkpoint-every", "1")
    wait_for_checkpoint(workdir, child, at_least_step=4)  # inside epoch 2
    child.kill()
    child.wait()
    steps = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
    assert steps and steps[-1] < 9, steps
    assert run_in_process(workdir, "--checkpoint-every", "1") == 0
    assert_resumed_bitwise(workdir, uninterrupted)


def test_resume_from_inside_an_epoch_is_bitwise_identical(uninterrupted, tmp_path):
    """The fast tier's twin of the SIGKILL test above, in this process: the run dies right
    after saving step 4 (inside epoch 2 of 3 steps each), then resumes from there."""
    workdir = tmp_path / "cut"
    with killed_after_saving(4):
        run_in_process(workdir, "--checkpoint-every", "1")
    assert max(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit()) == 4
    assert len(open(workdir / "metrics.jsonl").readlines()) == 1  # epoch 2 did not end
    assert run_in_process(workdir, "--checkpoint-every", "1") == 0
    assert_resumed_bitwise(workdir, uninterrupted)


@pytest.mark.slow(reason="a training subprocess, signalled")
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_save_a_checkpoint_and_exit_with_one_line(tmp_path, signum, code):
    workdir = tmp_path / "signalled"
    child = start_child(workdir, "--checkpoint-every", "2")
    wait_for_checkpoint(workdir, child, at_least_step=2)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == code, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.py: stopped by {signal.Signals(signum).name} at step ")
    stopped_at = int(last.split(" at step ")[1].split(";")[0])
    assert stopped_at in [int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit()]


@pytest.mark.slow(reason="fault injection: trains until the NaN")
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_make_train_step = loop.make_train_step

    def make_poisoned_train_step(**options):
        step_fn = real_make_train_step(max_traces=2, **options)

        def poisoned(state, images):
            if int(state.step) == 3:  # the batch of step 4 holds a NaN pixel
                images = images.at[0, 0, 0, 0].set(np.nan)
            return step_fn(state, images)
        return poisoned

    monkeypatch.setattr(loop, "make_train_step", make_poisoned_train_step)
    workdir = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="at step 4 "):
        with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
            loop.train_and_evaluate(
                tiny_config(epochs=3, checkpoint_every=1, data_dir=str(tmp_path / "data")),
                str(workdir), progress=False, log=lambda line: None)
    steps = sorted(int(n) for n in os.listdir(workdir / "checkpoints"))
    assert steps[-1] == 3
    chex.assert_tree_all_finite(vae_jax.load_variables(str(workdir)))


def test_corrupt_newest_checkpoint_warns_and_resumes_from_the_previous(uninterrupted, tmp_path):
    workdir = tmp_path / "corrupt"
    shutil.copytree(uninterrupted, workdir)
    for root, _, names in os.walk(workdir / "checkpoints" / "9"):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(max(os.path.getsize(path) // 3, 1))
    with pytest.warns(UserWarning, match=r"checkpoints/9 is unreadable"):
        assert run_in_process(workdir) == 0
    assert (workdir / "unreadable_checkpoints" / "9").is_dir()  # kept, not deleted
    chex.assert_trees_all_equal(full_state(workdir), full_state(uninterrupted))


def test_half_written_checkpoint_is_ignored(uninterrupted, tmp_path):
    """orbax writes under a temporary name and renames when complete; a crash leaves this."""
    workdir = tmp_path / "half"
    shutil.copytree(uninterrupted, workdir)
    partial = workdir / "checkpoints" / "12.orbax-checkpoint-tmp-1234"
    shutil.copytree(workdir / "checkpoints" / "9", partial)
    shutil.rmtree(partial / "variables")
    assert full_state(workdir)[0] == 9
    chex.assert_trees_all_equal(vae_jax.load_variables(str(workdir)),
                                vae_jax.load_variables(str(uninterrupted)))


def test_what_a_crashed_save_left_is_removed_at_the_next_save(uninterrupted, tmp_path):
    """orbax clears a half-written checkpoint (`cleanup_tmp_directories`) when the resumed
    run next saves; the checkpoints it writes are whole."""
    workdir = tmp_path / "crashed"
    shutil.copytree(uninterrupted, workdir)
    partial = workdir / "checkpoints" / "12.orbax-checkpoint-tmp-1234"
    shutil.copytree(workdir / "checkpoints" / "9", partial)
    shutil.rmtree(partial / "variables")
    assert run_in_process(workdir, "--epochs", "4") == 0
    assert sorted(os.listdir(workdir / "checkpoints")) == ["12", "6", "9"]
    assert full_state(workdir)[0] == 12


def test_orbax_decides_the_checkpoints_inside_an_epoch(tmp_path):
    """--checkpoint-every 2 with 3 steps an epoch: steps 2, 4 and 8 (6 ends an epoch, which
    saves anyway), never a step at or before the newest checkpoint; none without the flag."""
    policy = loop.periodic_checkpoints(2, steps_per_epoch=3)
    with run_checkpoints.RunCheckpoints(str(tmp_path), should_save=policy) as run:
        assert [step for step in range(1, 10) if run.should_save(step)] == [2, 4, 8]
        run.save(4, untrained_variables(), {"step": np.full((), 4, np.int32)})
        assert [step for step in range(1, 10) if run.should_save(step)] == [8]
    assert loop.periodic_checkpoints(0, steps_per_epoch=3) is None
    with run_checkpoints.RunCheckpoints(str(tmp_path)) as run:
        assert not any(run.should_save(step) for step in range(1, 10))


def test_finished_run_resumes_to_nothing_and_can_be_extended(uninterrupted, tmp_path):
    workdir = tmp_path / "extended"
    shutil.copytree(uninterrupted, workdir)
    before = snapshot(workdir / "checkpoints")
    assert run_in_process(workdir) == 0
    assert snapshot(workdir / "checkpoints") == before
    assert run_in_process(workdir, "--epochs", "4") == 0
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4] and records[-1]["step"] == 12


@pytest.mark.parametrize("flags, message", [
    (["--z-dim", "8"], "--z-dim 8 differs from 32 of the run saved in"),
    (["--batch-size", "8"], "--batch-size 8 differs from 16"),
    (["--fresh"], "--fresh: --workdir"),
])
def test_refusals_leave_the_run_untouched(uninterrupted, tmp_path, capsys, flags, message):
    workdir = tmp_path / "refused"
    shutil.copytree(uninterrupted, workdir)
    before = snapshot(workdir)
    assert run_in_process(workdir, *flags) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert snapshot(workdir) == before


def test_fresh_overwrite_starts_over(uninterrupted, tmp_path):
    workdir = tmp_path / "fresh"
    shutil.copytree(uninterrupted, workdir)
    assert run_in_process(workdir, "--fresh", "--overwrite", "--epochs", "1") == 0
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]
    assert len(open(workdir / "metrics.jsonl").readlines()) == 1


def test_unwritable_workdir_is_refused(tmp_path, capsys):
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    assert train_command.main(["--workdir", str(not_a_directory / "run"), "--no-download"]) == 2
    assert "is not a writable directory" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):  # as root too: a read-only mount, or os.access answering so
        assert train_command.main(["--workdir", str(locked / "run"), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{locked}" in err and "is not a writable directory" in err
    assert os.listdir(locked) == []


@pytest.mark.parametrize("message, expected", [
    ("Encountered error while reading array index: (slice(0, 4, 1),). See full TensorStore "
     "details: {...}", "Encountered error while reading array index: (slice(0, 4, 1),)"),
    ("DATA_LOSS: Error reading local file: <bound method pybind11_detail_function_record_v1_"
     "system_libstdcpp_gxx_abi_1xxx of <tensorstore.Promise>>", "DATA_LOSS: Error reading "
                                                              "local file"),
    ("NOT_FOUND: Error opening \"manifest.ocdbt\" [source locations='tensorstore/kvstore/"
     "ocdbt.cc:85']\nsecond line", "NOT_FOUND: Error opening \"manifest.ocdbt\""),
    ("", "ValueError"),
])
def test_unreadable_checkpoint_warnings_keep_the_first_readable_words(message, expected):
    assert run_checkpoints.error_line(ValueError(message)) == expected


@pytest.mark.slow(reason="fault injection: trains until the loss diverges")
def test_a_non_finite_loss_before_any_checkpoint_says_there_is_none(tmp_path, capsys):
    """A learning rate so large that the loss diverges at step 2: the run stops in one line
    without claiming that a last good checkpoint stays, and saves none; once a checkpoint
    exists the message names it."""
    from vae_jax.training import hooks
    workdir = tmp_path / "diverged"
    assert run_in_process(workdir, "--learning-rate", "1e30") == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("train.py: the training loss (nan) is not finite at step 2 (epoch 1); "
                    "stopped without saving it (there is no earlier checkpoint)")
    assert not (workdir / "checkpoints").exists() or not any(
        name.isdigit() for name in os.listdir(workdir / "checkpoints"))
    where = str(tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    with pytest.raises(NonFiniteLossError, match=rf"\(the last good checkpoint in {where} "
                                                 r"stays\)$"):
        hooks.require_finite(np.float32(np.nan), "the training loss", 5, 3, where)