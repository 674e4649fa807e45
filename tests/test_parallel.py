"""Every device: the same numbers on 1 and 8 devices, checkpoints that move between
device counts, and batches that must split evenly.

The device count is fixed when JAX starts, so the runs on 3 or 8 fake CPU devices
(`JAX_NUM_CPU_DEVICES`) happen in processes of their own (tests/devices_worker.py); what
they compute is compared with this process's one device. Fake devices share the same
cores: these tests check what is computed, not how fast. Several processes are
tests/test_processes.py's.
"""

import json

import jax
import numpy as np
import pytest

from tests import devices_worker
from tests.helpers import RUN_FLAGS, assert_trained_alike, run_in_process, worker
from vae_jax.runtime.mesh import DataParallel


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
    assert " on cpu, 8 devices, 1 process" in result.stdout
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


@pytest.mark.parametrize("num_examples, batch_size, devices, fits, nearest", [
    (60_000, 1024, 8, True, [1016, 1032]), (60_000, 1024, 3, False, [1023, 1026]),
    (48, 16, 3, False, [15, 18])])
def test_usable_batch_sizes(num_examples, batch_size, devices, fits, nearest):
    """The nearest batch sizes whose batches divide among the devices, and the check that
    takes a batch size that does (MNIST's 60,000 in 1024s over 8 devices) and refuses one
    that does not, naming them."""
    from vae_jax.runtime.mesh import usable_batch_sizes
    assert usable_batch_sizes(num_examples, batch_size, devices) == nearest
    parallel = DataParallel.create(1)
    object.__setattr__(parallel, "mesh", type("Mesh", (), {"devices": np.zeros(devices)})())
    if fits:
        parallel.check_batches(num_examples, batch_size)
    else:
        with pytest.raises(ValueError, match=" or ".join(map(str, nearest))):
            parallel.check_batches(num_examples, batch_size)


def test_one_process_mesh_describes_itself():
    parallel = DataParallel.create()
    assert parallel.describe() == f"{jax.default_backend()}, 1 device, 1 process"
    with pytest.raises(Exception, match="--devices 2: there is only 1 device"):
        DataParallel.create(2)
