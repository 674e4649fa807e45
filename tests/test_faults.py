"""Faults, tried as a hostile user would: damaged checkpoints and files, two runs at once,
bad input of every kind, full and read-only disks, non-finite numbers, interruptions.

Each class of fault is tried in several ways; in each, the promise is the same: a clear
one-line message (exit code 2) or a warning and a working fallback, and nothing already
saved lost or corrupted.
"""

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

import vae_jax
from tests.helpers import (
    REPO_ROOT,
    full_state,
    run_in_process,
    save_untrained,
    snapshot,
    untrained_variables,
)
from vae_jax.checkpoints import digests, run_checkpoints
from vae_jax.checkpoints.workdir import exclusive
from vae_jax.commands import evaluate as evaluate_command
from vae_jax.commands import plots as plots_command
from vae_jax.commands import sample as sample_command
from vae_jax.commands import torch_port as torch_port_command
from vae_jax.commands import train as train_command
from vae_jax.data import input_pipeline
from vae_jax.evaluation import elbo, sampling

# --- helpers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A really prepared (not mocked) tiny dataset, `dummy_mnist`: 20 train and 20 test
    28x28 images, written by tfds' own test builder, offline."""
    directory = tmp_path_factory.mktemp("tfds")
    tfds.testing.DummyMnist(data_dir=str(directory)).download_and_prepare()
    return directory


def dummy_flags(data_dir, workdir, *extra):
    return ["--dataset", "dummy_mnist", "--data-dir", str(data_dir), "--no-download",
            "--batch-size", "8", "--epochs", "1", "--no-progress", "--workdir", str(workdir),
            *extra]


def run(capsys, main, *args):
    """(exit code, stdout, stderr lines) of a command's `main(args)` in this process;
    argparse's refusals (SystemExit) included."""
    try:
        status = main([str(arg) for arg in args])
    except SystemExit as exit_info:
        status = exit_info.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip().splitlines()


def assert_one_line(status, lines, *words):
    assert status == 2, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    for word in words:
        assert word in lines[0], lines


def largest_file(directory):
    files = [os.path.join(root, name) for root, _, names in os.walk(directory)
             for name in names]
    return max(files, key=os.path.getsize)


@contextlib.contextmanager
def read_only(path):
    """`path` (a file or directory) read-only for this process, with its contents intact:
    chmod for an ordinary user; for root, whom modes do not stop, a read-only bind mount;
    where root may not mount, `os.access` (what the runs' checks ask) answers for `path` as
    on a read-only file system, and the test says so in a warning."""
    if os.geteuid() != 0:
        mode = os.stat(path).st_mode
        os.chmod(path, 0o555 if os.path.isdir(path) else 0o444)
        try:
            yield
        finally:
            os.chmod(path, mode)
        return
    mounted = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
    if mounted.returncode != 0:
        warnings.warn(f"cannot mount {path} read-only here ({mounted.stderr.decode().strip()});"
                      f" os.access answers as a read-only file system would")
        with refused_writes(path):
            yield
        return
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def refused_writes(path):
    """`os.access` says no write (nor search-and-write) is allowed at or under `path`."""
    real_access, root = os.access, os.path.abspath(path)

    def access(target, mode, *args, **kwargs):
        inside = os.path.abspath(target) == root or os.path.abspath(target).startswith(
            root + os.sep)
        if inside and mode & os.W_OK:
            return False
        return real_access(target, mode, *args, **kwargs)

    os.access = access
    try:
        yield
    finally:
        os.access = real_access


@contextlib.contextmanager
def small_disk(path, megabytes):
    """A tmpfs of `megabytes` at `path`, yielding (path, what a failed write is called);
    where root may not mount, the run's files may grow to at most `megabytes` / 4 once its
    first checkpoint is saved (RLIMIT_FSIZE: the next save fails as on a full disk, with
    "File too large"), and the test says so in a warning."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}M", "tmpfs",
                              str(path)], capture_output=True)
    if mounted.returncode == 0:
        try:
            yield path, "the disk is full"
        finally:
            subprocess.run(["umount", str(path)], check=True)
        return
    warnings.warn(f"cannot mount a small disk here ({mounted.stderr.decode().strip()}); "
                  f"a file size limit after the first checkpoint stands in for it")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill
    save = run_checkpoints.RunCheckpoints.save

    def save_then_fill_the_disk(self, *args, **kwargs):
        save(self, *args, **kwargs)
        resource.setrlimit(resource.RLIMIT_FSIZE, (megabytes * 2**20 // 4, hard))

    run_checkpoints.RunCheckpoints.save = save_then_fill_the_disk
    try:
        yield path, "larger than this system allows"
    finally:
        run_checkpoints.RunCheckpoints.save = save
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


# --- 1. damaged checkpoints are noticed, set aside and skipped ---------------------------

def flip_bit(path, where=0.5):
    data = bytearray(open(path, "rb").read())
    data[int(len(data) * where)] ^= 0x10
    open(path, "wb").write(bytes(data))


def random_bytes(path):
    data = bytearray(open(path, "rb").read())
    start = len(data) // 3
    data[start:start + 4096] = np.random.default_rng(0).bytes(4096)
    open(path, "wb").write(bytes(data))


def truncate(path):
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 3)


def other_values_same_digests(step_dir):
    """Re-saves the variables with one weight changed, keeping the old digests: what a
    damaged file that still decodes amounts to, made deterministic."""
    path = os.path.join(step_dir, "variables")
    tree = jax.tree.map(np.array, ocp.StandardCheckpointer().restore(path))
    tree["params"]["decoder"]["deconv2"]["kernel"][0, 0, 0, 0] += 1e-6
    shutil.rmtree(path)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, tree)


def non_finite_weight(step_dir):
    """Re-saves the variables with one weight infinite and rewrites their digests to
    match: damage that no digest can catch, which a run never saves."""
    path = os.path.join(step_dir, "variables")
    tree = jax.tree.map(np.array, ocp.StandardCheckpointer().restore(path))
    tree["params"]["decoder"]["deconv2"]["kernel"][0, 0, 0, 0] = np.inf
    shutil.rmtree(path)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, tree)
    record = os.path.join(step_dir, "digests", "metadata")
    saved = json.load(open(record))
    saved["variables"] = digests.tree_digests(tree)
    json.dump(saved, open(record, "w"))


def without_digests(damage=None):
    """`damage`, then the digest record deleted (an interrupted copy, a backup tool that
    skips small folders)."""
    def apply(step_dir):
        if damage is not None:
            damage(step_dir)
        shutil.rmtree(os.path.join(step_dir, "digests"))
    return apply


DAMAGE = {
    "a flipped bit in the variables": lambda step: flip_bit(
        largest_file(os.path.join(step, "variables"))),
    "a flipped bit at the end of the optimizer state": lambda step: flip_bit(
        largest_file(os.path.join(step, "train_state")), where=0.97),
    "4 KB of random bytes": lambda step: random_bytes(
        largest_file(os.path.join(step, "variables"))),
    "a truncated file": lambda step: truncate(largest_file(os.path.join(step, "variables"))),
    "a deleted file": lambda step: os.remove(largest_file(os.path.join(step, "train_state"))),
    "garbage digests": lambda step: open(largest_file(os.path.join(step, "digests")),
                                         "w").write("{\"variables\": {}}"),
    "other values under the same digests": other_values_same_digests,
    "a deleted digest record": without_digests(),
    "a flipped bit and no digest record": without_digests(lambda step: flip_bit(
        largest_file(os.path.join(step, "variables")))),
    "a non-finite weight under matching digests": non_finite_weight,
}


@pytest.mark.slow(reason="fault injection: ten kinds of damage, each restored")
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_set_aside_and_the_previous_one_used(
        uninterrupted, tmp_path, damage):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    DAMAGE[damage](str(workdir / "checkpoints" / "9"))
    with pytest.warns(UserWarning, match=r"checkpoints/9 is unreadable .*moved to"):
        step, trees = full_state_with_quarantine(workdir)
    assert step == 6
    expected = checkpoints_at(uninterrupted, 6)
    chex.assert_trees_all_equal(trees, expected)
    assert (workdir / "unreadable_checkpoints" / "9").is_dir()


def full_state_with_quarantine(workdir):
    with run_checkpoints.RunCheckpoints(str(workdir)) as run:
        return run.restore_newest(("variables", "train_state"))


def checkpoints_at(workdir, step):
    """The variables and train state saved at `step`, read with orbax alone."""
    items = ("variables", "train_state")
    with ocp.CheckpointManager(str(workdir / "checkpoints")) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore() for item in items}))
    return {item: restored[item] for item in items}


@pytest.mark.slow(reason="fault injection: trains past each damage")
@pytest.mark.parametrize("damage", ["a flipped bit in the variables",
                                    "other values under the same digests",
                                    "a flipped bit and no digest record",
                                    "a non-finite weight under matching digests"])
def test_training_resumes_past_a_damaged_checkpoint_exactly(uninterrupted, tmp_path, damage):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    DAMAGE[damage](str(workdir / "checkpoints" / "9"))
    with pytest.warns(UserWarning, match="checkpoints/9 is unreadable"):
        assert run_in_process(workdir) == 0
    chex.assert_trees_all_equal(full_state(workdir), full_state(uninterrupted))


@pytest.mark.slow(reason="fault injection: evaluates")
def test_evaluate_uses_the_previous_checkpoint_of_a_damaged_run(uninterrupted, tmp_path,
                                                                capsys):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    other_values_same_digests(str(workdir / "checkpoints" / "9"))
    with pytest.warns(UserWarning, match="checkpoints/9 is unreadable"):
        variables = vae_jax.load_variables(str(workdir))
    chex.assert_trees_all_equal(variables, checkpoints_at(uninterrupted, 6)["variables"])
    with pytest.warns(UserWarning, match="checkpoints/9 is unreadable"), \
            tfds.testing.mock_data(num_examples=6):
        status, out, lines = run(capsys, evaluate_command.main, "--workdir", workdir, "--json",
                                 "--iwae-samples", "2", "--no-progress")
    assert status == 0, lines
    assert 100 < json.loads(out)["neg_elbo"] < 1000


def resave_with_other_values(variables_dir):
    """Saved variables with one weight changed and the digests of the old ones."""
    digests = open(os.path.join(variables_dir, "digests.json")).read()
    tree = jax.tree.map(np.array, ocp.StandardCheckpointer().restore(str(variables_dir)))
    tree["params"]["encoder"]["conv1"]["kernel"][0, 0, 0, 0] += 1e-6
    shutil.rmtree(variables_dir)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(str(variables_dir), tree)
    open(os.path.join(variables_dir, "digests.json"), "w").write(digests)


def resave_non_finite(variables_dir):
    """Saved variables with one weight NaN, and digests that match them."""
    tree = jax.tree.map(np.array, ocp.StandardCheckpointer().restore(str(variables_dir)))
    tree["params"]["encoder"]["conv1"]["kernel"][0, 0, 0, 0] = np.nan
    shutil.rmtree(variables_dir)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(str(variables_dir), tree)
    json.dump(digests.tree_digests(tree), open(os.path.join(variables_dir, "digests.json"), "w"))


@pytest.mark.parametrize("damage, words", [
    (lambda path: flip_bit(largest_file(path)), "cannot read variables"),
    (lambda path: truncate(largest_file(path)), "cannot read variables"),
    (resave_with_other_values, "does not match its digest"),
    (lambda path: os.remove(path / "digests.json"), "digest record digests.json is missing"),
    (resave_non_finite, "params/encoder/conv1/kernel holds NaN or infinity"),
], ids=["a flipped bit", "a truncated file", "other values", "a deleted digests.json",
        "a NaN weight under matching digests"])
def test_damaged_saved_variables_are_refused_in_one_line(tmp_path, capsys, damage, words):
    workdir = tmp_path / "saved"
    save_untrained(workdir)
    damage(workdir / "variables")
    status, _, lines = run(capsys, sample_command.main, "--workdir", workdir)
    assert_one_line(status, lines, "cannot read variables", words)


def test_a_run_whose_checkpoints_are_all_damaged_says_so(uninterrupted, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    for step in ("3", "6", "9"):
        without_digests()(str(workdir / "checkpoints" / step))
    with pytest.warns(UserWarning) as warned:
        status, _, lines = run(capsys, sample_command.main, "--workdir", workdir)
    assert [str(warning.message).split(" is unreadable ")[1] for warning in warned] == [
        "(MissingDigests: its digest record is missing); trying the one before it"] * 3
    assert_one_line(status, lines, f"error: no readable checkpoint in {workdir / 'checkpoints'}"
                                   f": all 3 are damaged (see the warnings above)")


# --- 2. one run per workdir ----------------------------------------------------------------

@pytest.mark.slow(reason="trains once the lock is free")
def test_a_second_run_on_a_busy_workdir_is_refused_naming_the_holder(data_dir, tmp_path,
                                                                      capsys):
    workdir = tmp_path / "run"
    with exclusive(str(workdir), "train.py --workdir run (the first)"):
        status, _, lines = run(capsys, train_command.main, *dummy_flags(data_dir, workdir))
    assert_one_line(status, lines, "is in use by another run", f"pid {os.getpid()}",
                    "the first")
    assert os.listdir(workdir) == [".lock"]
    status, _, lines = run(capsys, train_command.main, *dummy_flags(data_dir, workdir))
    assert status == 0, lines  # released when the holder ended


@pytest.mark.slow(reason="a subprocess, SIGKILLed")
def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    """SIGKILL a process that holds the lock: the next one gets it at once."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
                               "from vae_jax.checkpoints.workdir import exclusive\n"
                               "with exclusive(sys.argv[1], 'holder'):\n"
                               "    print('held', flush=True)\n"
                               "    time.sleep(600)\n", str(tmp_path)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(vae_jax.checkpoints.workdir.WorkdirBusy, match=f"pid {holder.pid}"):
        with exclusive(str(tmp_path), "second"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with exclusive(str(tmp_path), "third"):
        pass


def test_importing_weights_into_a_training_run_is_refused(uninterrupted, tmp_path, capsys):
    """Refused before the .pt file is read (so this needs no torch)."""
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    before = snapshot(workdir)
    status, _, lines = run(capsys, torch_port_command.main, tmp_path / "vae.pt", "--workdir",
                           workdir)
    assert_one_line(status, lines, "holds a training run", "config.json")
    assert snapshot(workdir) == before
    with pytest.raises(run_checkpoints.CheckpointError, match="holds a training run"):
        vae_jax.save_variables(str(workdir), untrained_variables(), {"z_dim": 32})
    assert snapshot(workdir) == before


def test_training_into_saved_variables_is_refused(data_dir, tmp_path, capsys):
    workdir = tmp_path / "imported"
    save_untrained(workdir)
    before = snapshot(workdir)
    status, _, lines = run(capsys, train_command.main, *dummy_flags(data_dir, workdir))
    assert_one_line(status, lines, "holds saved variables")
    assert snapshot(workdir) == before


# --- 3. every bad input: one line, exit code 2 -----------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--train-split", "train[:abc]"], ["split 'train[:abc]'", "Unrecognized split format"]),
    (["--train-split", "train[200%:]"], ["split 'train[200%:]'", "[-100, 100]"]),
    (["--train-split", ""], ["split ''"]),
    (["--test-split", "validation"], ["Unknown split 'validation'"]),
    (["--test-split", "test[:0]"], ["selects no images"]),
    (["--dataset", ""], ["dataset name is empty"]),
    (["--dataset", "dummy_mnist:9.9.9"], ["9.9.9"]),
    (["--dataset", "dummy_mnist/foo"], ["dummy_mnist/foo"]),
    (["--dataset", "glue"], ["no 'image' and 'label' features"]),
    (["--seed", "4294967296"], ["--seed", "0..4294967295"]),
    (["--seed", "-1"], ["--seed"]),
    (["--z-dim", "1000000000"], ["--z-dim 1000000000", "GiB"]),
    (["--workdir", ""], ["--workdir is empty"]),
])
def test_bad_training_input_is_one_line(data_dir, tmp_path, capsys, flags, words):
    workdir = tmp_path / "run"
    status, _, lines = run(capsys, train_command.main, *dummy_flags(data_dir, workdir), *flags)
    assert_one_line(status, lines, *words)
    assert not workdir.exists()


def test_damaged_data_files_are_one_line(data_dir, tmp_path, capsys):
    damaged = tmp_path / "tfds"
    shutil.copytree(data_dir, damaged)
    (record,) = [os.path.join(root, name) for root, _, names in os.walk(damaged)
                 for name in names if "test.tfrecord" in name]
    data = bytearray(open(record, "rb").read())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    open(record, "wb").write(bytes(data))
    status, _, lines = run(capsys, train_command.main, *dummy_flags(damaged, tmp_path / "run"))
    assert_one_line(status, lines, "its files look damaged")


@pytest.mark.parametrize("content, words", [
    ("{not json", ["config.json is damaged", "not JSON"]),
    ("", ["config.json is damaged"]),
    ("[1, 2]", ["config.json is damaged", "list"]),
    ('{"z_dim": "thirty-two"}', ["z_dim"]),
    ('{"z_dim": NaN}', ["config.json is damaged"]),
])
@pytest.mark.parametrize("command", ["evaluate", "sample", "plots"])
def test_a_damaged_config_json_is_one_line(tmp_path, capsys, content, words, command):
    workdir = tmp_path / "saved"
    save_untrained(workdir)
    (workdir / "config.json").write_text(content)
    main = {"evaluate": evaluate_command.main, "sample": sample_command.main,
            "plots": plots_command.main}[command]
    with tfds.testing.mock_data(num_examples=4):
        status, _, lines = run(capsys, main, "--workdir", workdir)
    assert_one_line(status, lines, *words)


def test_a_run_with_a_damaged_config_json_is_not_resumed(uninterrupted, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    (workdir / "config.json").write_text('{"seed": 5, "batch')
    before = snapshot(workdir)
    with tfds.testing.mock_data(num_examples=48):
        status, _, lines = run(capsys, train_command.main, "--workdir", workdir, "--epochs", "4",
                               "--batch-size", "16", "--seed", "5", "--no-progress")
    assert_one_line(status, lines, "config.json is damaged")
    assert snapshot(workdir) == before


@pytest.mark.slow(reason="fault injection: trains past each damage")
@pytest.mark.parametrize("last_line", ['{"epoch": 3, "step": 9, "train_lo',
                                       "\x00\x00\x00", '{"epoch": 3, "test_loss": NaN}'])
def test_a_half_written_metrics_line_is_dropped_on_resume(uninterrupted, tmp_path, last_line):
    """A kill during the append leaves a partial last line; the resumed run drops it, and
    the plots skip it."""
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    lines = open(workdir / "metrics.jsonl").readlines()
    open(workdir / "metrics.jsonl", "w").writelines(lines[:2] + [last_line])
    shutil.rmtree(workdir / "checkpoints" / "9")  # the kill came before the last save
    assert run_in_process(workdir) == 0
    losses = [{key: value for key, value in json.loads(line).items() if "loss" in key}
              for line in open(workdir / "metrics.jsonl")]
    assert losses == [{key: value for key, value in json.loads(line).items() if "loss" in key}
                      for line in open(uninterrupted / "metrics.jsonl")]


def test_the_plots_skip_a_broken_metrics_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "train_loss": 200, "test_loss": 150}\n{"epoch": 2, "tr\n')
    warnings = []
    records = vae_jax.checkpoints.metrics_file.read_metrics(str(path), warn=warnings.append)
    assert [record["epoch"] for record in records] == [1]
    assert len(warnings) == 1 and "line 2" in warnings[0]


@pytest.mark.parametrize("args, words", [
    (["--iwae-samples", str(10**20)], ["--iwae-samples", "must be in"]),
    (["--seed", str(2**32)], ["--seed", "must be in"]),
    (["--iwae-chunk", "0"], ["--iwae-chunk"]),
])
def test_bad_evaluation_flags_are_one_line(tmp_path, capsys, args, words):
    save_untrained(tmp_path)
    status, _, lines = run(capsys, evaluate_command.main, "--workdir", tmp_path, *args)
    assert_one_line(status, lines, *words)


def test_sample_refuses_a_grid_too_large_and_samples_in_batches(tmp_path, capsys):
    save_untrained(tmp_path)
    status, _, lines = run(capsys, sample_command.main, "--workdir", tmp_path, "--num", "100000")
    assert_one_line(status, lines, "--num", "must be in 1..10000")
    model, variables, _ = vae_jax.load_model(str(tmp_path))
    key = jax.random.key(0)
    chex.assert_trees_all_close(sampling.sample_images(model, variables, key, 7, batch_size=3),
                                sampling.sample_images(model, variables, key, 7), atol=1e-6)


@pytest.mark.slow(reason="mounts a small disk and fills it")
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path,
                                                                              capsys):
    with small_disk(tmp_path / "disk", 12) as (disk, failed_write):
        workdir = disk / "run"
        with tfds.testing.mock_data(num_examples=48):
            status, _, lines = run(capsys, train_command.main, "--epochs", "3", "--batch-size",
                                   "16", "--no-progress", "--workdir", workdir, "--data-dir",
                                   tmp_path / "data")
        assert_one_line(status, lines, failed_write, "the last good checkpoint (step")
        steps = sorted(os.listdir(workdir / "checkpoints"))
        assert steps and all(name.isdigit() for name in steps), steps  # no half-written one
        chex.assert_tree_all_finite(vae_jax.load_variables(str(workdir)))


@pytest.mark.parametrize("inside", ["checkpoints", "metrics.jsonl", "tensorboard",
                                    "config.json"])
def test_an_unwritable_part_of_the_workdir_is_found_before_training(uninterrupted, tmp_path,
                                                                     capsys, inside):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    with read_only(workdir / inside), tfds.testing.mock_data(num_examples=48):
        status, _, lines = run(capsys, train_command.main, "--workdir", workdir, "--epochs", "4",
                               "--batch-size", "16", "--seed", "5", "--no-progress",
                               "--data-dir", tmp_path / "data")
    assert_one_line(status, lines, f"{workdir / inside} is not writable")


@pytest.mark.parametrize("inside, kind", [("checkpoints", "file"), ("tensorboard", "file"),
                                          ("metrics.jsonl", "directory")])
def test_a_run_output_of_the_wrong_kind_is_found_before_training(uninterrupted, tmp_path,
                                                                capsys, inside, kind):
    """`checkpoints` replaced by a file (say): refused before an epoch is trained, and the
    earlier run's files, metrics.jsonl included, are left as they were."""
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    shutil.rmtree(workdir / inside) if (workdir / inside).is_dir() else os.remove(
        workdir / inside)
    (workdir / inside).mkdir() if kind == "directory" else (workdir / inside).write_text("x")
    before = snapshot(workdir)
    with tfds.testing.mock_data(num_examples=48):
        status, _, lines = run(capsys, train_command.main, "--workdir", workdir, "--epochs", "4",
                               "--batch-size", "16", "--seed", "5", "--no-progress",
                               "--data-dir", tmp_path / "data")
    wanted = "file" if kind == "directory" else "directory"
    assert_one_line(status, lines, f"{workdir / inside} is not a {wanted}")
    assert snapshot(workdir) == before


def test_a_workdir_that_is_a_dangling_symbolic_link_is_one_line(tmp_path, capsys):
    (tmp_path / "run").symlink_to(tmp_path / "gone")
    status, _, lines = run(capsys, train_command.main, "--workdir", tmp_path / "run",
                           "--no-download")
    assert_one_line(status, lines, f"{tmp_path / 'run'} is a symbolic link to "
                                   f"{tmp_path / 'gone'}, which does not exist")


@pytest.mark.parametrize("command", ["sample", "plots"])
def test_a_read_only_workdir_is_one_line_for_the_picture_commands(tmp_path, capsys, command):
    workdir = tmp_path / "saved"
    save_untrained(workdir)
    main = {"sample": sample_command.main, "plots": plots_command.main}[command]
    with read_only(workdir), tfds.testing.mock_data(num_examples=4):
        status, _, lines = run(capsys, main, "--workdir", workdir)
    assert_one_line(status, lines, str(workdir))


def test_ctrl_c_while_the_data_loads_is_one_line(data_dir, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(input_pipeline, "load_split", interrupted)
    status, _, lines = run(capsys, train_command.main, *dummy_flags(data_dir, tmp_path / "run"))
    assert (status, lines) == (130, ["train.py: interrupted"])


def test_importing_into_an_unwritable_directory_is_one_line_and_quick(tmp_path, capsys):
    target = tmp_path / "locked"
    target.mkdir()
    start = time.perf_counter()
    with read_only(target):
        status, _, lines = run(capsys, torch_port_command.main, tmp_path / "vae.pt", "--workdir",
                               target / "imported")
    assert_one_line(status, lines, "not a writable directory")
    assert time.perf_counter() - start < 60


# --- 4. a non-finite number is never written ---------------------------------------------------

@pytest.mark.slow(reason="fault injection: trains until the NaN")
def test_a_non_finite_test_loss_stops_before_anything_is_written(data_dir, tmp_path, capsys,
                                                                  monkeypatch):
    real_neg_elbo = elbo.neg_elbo

    def poisoned(*args, **kwargs):
        result = real_neg_elbo(*args, **kwargs)
        return elbo.ElboPass(**{**vars(result), "neg_elbo": result.neg_elbo * np.nan})

    workdir = tmp_path / "run"
    assert run(capsys, train_command.main, *dummy_flags(data_dir, workdir))[0] == 0
    monkeypatch.setattr(elbo, "neg_elbo", poisoned)
    status, _, lines = run(capsys, train_command.main,
                           *dummy_flags(data_dir, workdir, "--epochs", "2"))
    assert status == 1 and lines[-1].startswith("train.py: the test loss is not finite"), lines
    assert len(open(workdir / "metrics.jsonl").readlines()) == 1
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]


def test_evaluate_json_is_valid_json_for_one_image(tmp_path, capsys):
    save_untrained(tmp_path)
    with tfds.testing.mock_data(num_examples=1):
        status, out, lines = run(capsys, evaluate_command.main, "--workdir", tmp_path, "--json",
                                 "--iwae-samples", "2", "--no-progress")
    assert status == 0, lines

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    result = json.loads(out, parse_constant=refuse)
    assert result["num_images"] == 1 and result["neg_elbo_stderr"] is None


# --- 5. quieter, truer output ------------------------------------------------------------------

@pytest.mark.slow(reason="a subprocess reading damaged files")
def test_a_damaged_checkpoint_prints_one_warning_and_no_tracebacks(uninterrupted, data_dir,
                                                                   tmp_path):
    """The user's terminal, in a real process: a working fallback does not look like a
    crash (no asyncio or orbax tracebacks), and reading data prints no TensorFlow logs."""
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    truncate(largest_file(workdir / "checkpoints" / "9" / "variables"))
    child = ("import sys, vae_jax\nfrom vae_jax.data.input_pipeline import load_split\n"
             "load_split('dummy_mnist', 'test', sys.argv[2], download=False)\n"
             "vae_jax.load_model(sys.argv[1])\nprint('loaded')")
    result = subprocess.run([sys.executable, "-c", child, str(workdir), str(data_dir)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "loaded"
    warning, source_line = result.stderr.strip().splitlines()  # what warnings.warn prints
    assert "checkpoints/9 is unreadable" in warning and "restore_newest" in source_line


@pytest.mark.slow(reason="trains, then evaluates")
def test_evaluate_defaults_to_the_runs_dataset(data_dir, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert run(capsys, train_command.main, *dummy_flags(data_dir, workdir, "--test-split",
                                                        "test[:10]"))[0] == 0
    status, out, lines = run(capsys, evaluate_command.main, "--workdir", workdir, "--json",
                             "--iwae-samples", "2", "--no-progress")
    assert status == 0, lines
    result = json.loads(out)
    assert (result["dataset"], result["split"], result["num_images"]) == (
        "dummy_mnist", "test[:10]", 10)


def test_a_slow_download_says_what_it_is_doing():
    said = []
    with input_pipeline._notice_after(0.05, "downloading mnist to /data", said.append):
        time.sleep(0.3)
    with input_pipeline._notice_after(0.5, "never said", said.append):
        pass
    time.sleep(0.6)
    assert said == ["downloading mnist to /data"]


def test_sample_out_may_be_a_directory(tmp_path, capsys):
    save_untrained(tmp_path / "saved")
    (tmp_path / "pictures").mkdir()
    status, out, _ = run(capsys, sample_command.main, "--workdir", tmp_path / "saved", "--out",
                         tmp_path / "pictures", "--num", "4", "--seed", "3")
    assert status == 0
    assert out.strip() == str(tmp_path / "pictures" / "samples_seed3.png")
    assert not (tmp_path / "pictures.png").exists()
    status, _, lines = run(capsys, sample_command.main, "--workdir", tmp_path / "saved", "--out",
                           tmp_path / "grid.jpg")
    assert_one_line(status, lines, ".png")


def test_a_step_quarantined_twice_keeps_both_copies(uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    for _ in range(2):
        shutil.copytree(uninterrupted / "checkpoints" / "9", workdir / "checkpoints" / "9",
                        dirs_exist_ok=True)
        truncate(largest_file(workdir / "checkpoints" / "9" / "variables"))
        with pytest.warns(UserWarning, match="is unreadable"):
            full_state_with_quarantine(workdir)
    assert sorted(os.listdir(workdir / "unreadable_checkpoints")) == ["9", "9-2"]


@pytest.mark.slow(reason="trains again")
def test_fresh_overwrite_leaves_nothing_of_the_old_run(uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    (workdir / "unreadable_checkpoints").mkdir()
    assert run_in_process(workdir, "--fresh", "--overwrite", "--epochs", "1") == 0
    names = set(os.listdir(workdir))
    assert not {"reconstructions_epoch2.png", "samples_epoch3.png",
                "unreadable_checkpoints"} & names
    assert "reconstructions_epoch1.png" in names
    assert len(os.listdir(workdir / "tensorboard")) == 1


def test_a_run_resumes_only_in_the_epoch_mode_it_started_with(uninterrupted, tmp_path,
                                                             capsys):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    before = snapshot(workdir)
    assert run_in_process(workdir, "--epochs", "4", "--epoch-mode", "scan") == 2
    assert "--epoch-mode scan differs from steps" in capsys.readouterr().err
    assert snapshot(workdir) == before


def test_metrics_are_rewritten_only_when_the_run_has_an_epoch_to_record(uninterrupted,
                                                                      tmp_path):
    """A run resumed from an early checkpoint drops the later epochs' lines only with its
    first record: one that stops before then leaves metrics.jsonl as it was."""
    from vae_jax.training.writers import EpochWriter
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    before = (workdir / "metrics.jsonl").read_text()
    with EpochWriter(str(workdir), completed_epochs=1, log=lambda line: None):
        pass
    assert (workdir / "metrics.jsonl").read_text() == before
    assert len(before.splitlines()) == 3
