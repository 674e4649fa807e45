"""Datasets as .npz arrays files (vae_jax.data.arrays, vae-jax-export-data): the same
images as tfds, tfds' split syntax, read without TensorFlow, one-line errors, and a file
written whole or not at all."""

import io
import os
import re
import subprocess
import sys
import textwrap
import zipfile

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.helpers import REPO_ROOT, full_state, real_mnist_dir, requires_real_mnist
from vae_jax.commands import export_data
from vae_jax.commands import train as train_command
from vae_jax.data import arrays, input_pipeline
from vae_jax.runtime.errors import DatasetError

# A sitecustomize under which TensorFlow and tfds cannot be imported: a machine with JAX
# alone (the GPU images here have no TensorFlow).
WITHOUT_TENSORFLOW = textwrap.dedent("""
    import sys

    class Hiding:
        \"\"\"A finder that finds no tensorflow, as on a machine without it.\"\"\"

        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
                return None
            return self.finder.find_spec(name, path, target)

        def __getattr__(self, name):
            return getattr(self.finder, name)

    sys.meta_path[:] = [Hiding(finder) for finder in sys.meta_path]
""")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """tfds' offline `dummy_mnist` (20 train, 20 test images), really prepared."""
    directory = tmp_path_factory.mktemp("tfds")
    tfds.testing.DummyMnist(data_dir=str(directory)).download_and_prepare()
    return str(directory)


@pytest.fixture(scope="module")
def exported(data_dir, tmp_path_factory):
    """dummy_mnist's train and test splits written by vae-jax-export-data."""
    out = str(tmp_path_factory.mktemp("arrays") / "dummy.npz")
    assert export_data.main(["--dataset", "dummy_mnist", "--data-dir", data_dir,
                             "--no-download", "--out", out]) == 0
    return out


def without_tensorflow_env(site_dir):
    (site_dir / "sitecustomize.py").write_text(WITHOUT_TENSORFLOW)
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site_dir), REPO_ROOT, os.environ.get("PYTHONPATH", "")]))


@pytest.mark.parametrize("split", ["train", "test", "test[:7]", "train[5:-3]", "train[25%:]",
                                   "train[:-10%]", "train[-4:]", "test[13%:62%]"])
def test_an_exported_split_reads_back_what_tfds_gives(data_dir, exported, split):
    """The same labels in the same order (dummy_mnist's 20 images are all alike; the next
    test and the slow one on real MNIST compare pixels)."""
    expected = input_pipeline.load_split("dummy_mnist", split, data_dir, download=False)
    images, labels = input_pipeline.load_split(exported, split)
    chex.assert_shape(images, (len(expected[0]), 28, 28, 1))
    assert images.dtype == np.float32 and labels.dtype == np.int32
    np.testing.assert_array_equal(images, expected[0])
    np.testing.assert_array_equal(labels, expected[1])


@pytest.mark.parametrize("split, message", [
    ("test[:200%]", "200% is not a share of the split; percentages go from -100% to 100%"),
    ("test[-101%:]", "-101% is not a share of the split"),
    ("test[:1000000]", "1000000 is beyond the split's 20 images"),
    ("test[-21:]", "-21 is beyond the split's 20 images"),
    (" test ", "cannot parse it"),
])
def test_a_split_tfds_refuses_is_refused_here_too(data_dir, exported, split, message):
    with pytest.raises(DatasetError):
        input_pipeline.load_split("dummy_mnist", split, data_dir, download=False)
    with pytest.raises(DatasetError, match=re.escape(message)):
        input_pipeline.load_split(exported, split)


def test_random_images_make_the_round_trip_bit_for_bit(tmp_path):
    with tfds.testing.mock_data(num_examples=30):  # random pixels
        expected = input_pipeline.load_split("mnist", "train", str(tmp_path))
        assert export_data.main(["--splits", "train", "--data-dir", str(tmp_path),
                                 "--out", str(tmp_path / "mock.npz")]) == 0
    assert len(np.unique(expected[0].reshape(30, -1), axis=0)) == 30
    images, labels = input_pipeline.load_split(str(tmp_path / "mock.npz"), "train")
    np.testing.assert_array_equal(images, expected[0])
    np.testing.assert_array_equal(labels, expected[1])


@pytest.mark.slow(reason="real MNIST")
@requires_real_mnist
def test_real_mnist_slices_are_the_same_as_tfds_slices(tmp_path):
    assert export_data.main(["--data-dir", real_mnist_dir(), "--no-download",
                             "--out", str(tmp_path / "mnist.npz")]) == 0
    for split in ("test[:1000]", "train[10%:20%]", "test[-7:]"):
        expected = input_pipeline.load_split("mnist", split, real_mnist_dir(), download=False)
        images, labels = input_pipeline.load_split(str(tmp_path / "mnist.npz"), split)
        np.testing.assert_array_equal(images, expected[0])
        np.testing.assert_array_equal(labels, expected[1])


def test_the_export_command_says_what_it_wrote(data_dir, tmp_path, capsys):
    out = tmp_path / "two.npz"
    assert export_data.main(["--dataset", "dummy_mnist", "--data-dir", data_dir,
                             "--no-download", "--splits", "test", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: dummy_mnist (test 20 images), ")
    with np.load(out) as file:
        assert sorted(file.files) == ["test_images", "test_labels"]
        assert file["test_images"].dtype == np.uint8
    before = out.read_bytes()
    assert export_data.main(["--dataset", "dummy_mnist", "--data-dir", data_dir,
                             "--no-download", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"--out {out} exists; pass --overwrite to replace it")
    assert out.read_bytes() == before
    assert export_data.main(["--dataset", "dummy_mnist", "--data-dir", data_dir,
                             "--no-download", "--out", str(out), "--overwrite"]) == 0
    with np.load(out) as file:
        assert sorted(file.files) == ["test_images", "test_labels", "train_images",
                                      "train_labels"]


def test_own_arrays_uint8_or_float_without_channel(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.arange(6)
    np.savez(tmp_path / "own.npz", a_images=pixels, a_labels=labels,
             b_images=pixels.astype(np.float64) / 255.0, b_labels=labels.astype(np.int64))
    first, first_labels = arrays.load_split(str(tmp_path / "own.npz"), "a")
    second, _ = arrays.load_split(str(tmp_path / "own.npz"), "b[1:]")
    chex.assert_shape(first, (6, 28, 28, 1))
    np.testing.assert_array_equal(first[..., 0] * 255, pixels)
    np.testing.assert_allclose(second, first[1:], atol=1e-7)
    np.testing.assert_array_equal(first_labels, labels)


def good_arrays(count=4):
    return dict(test_images=np.zeros((count, 28, 28, 1), np.uint8),
                test_labels=np.zeros(count, np.int32))


@pytest.mark.parametrize("contents, split, message", [
    (good_arrays(), "valid", r"split 'valid' is not in .*: it has test$"),
    (good_arrays(), "test[1:x]", r"split 'test\[1:x\]' of .*: cannot parse it"),
    (good_arrays(), "test+test", r"a union like 'train\+test' is not read from an arrays"),
    (good_arrays(), "test[3:1]", r"split 'test\[3:1\]' of .* selects no images"),
    ({**good_arrays(), "test_images": np.zeros((4, 32, 32, 3), np.uint8)}, "test",
     r"test_images in .* has shape \(4, 32, 32, 3\); the course model needs"),
    ({**good_arrays(), "test_images": np.full((4, 28, 28), 2.0)}, "test",
     r"values outside \[0, 1\]"),
    ({**good_arrays(), "test_images": np.full((4, 28, 28), np.nan)}, "test",
     r"values outside \[0, 1\]"),
    ({**good_arrays(), "test_images": np.zeros((4, 28, 28), np.int64)}, "test",
     r"test_images in .* is int64; give uint8 pixels"),
    ({**good_arrays(), "test_labels": np.zeros(3, np.int32)}, "test",
     r"test_labels in .* must be 4 integers, one per image; it is int32 of shape \(3,\)"),
    ({"test_images": good_arrays()["test_images"]}, "test",
     r"split 'test' of .* has images but no test_labels array"),
])
def test_bad_arrays_are_one_line(tmp_path, contents, split, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **contents)
    with pytest.raises(DatasetError, match=message) as error:
        input_pipeline.load_split(str(path), split)
    assert "\n" not in str(error.value)


def test_a_missing_or_damaged_file_is_one_line(tmp_path):
    with pytest.raises(DatasetError, match=r"arrays file .*absent.npz does not exist"):
        input_pipeline.load_split(str(tmp_path / "absent.npz"), "test")
    (tmp_path / "damaged.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DatasetError, match=r"cannot read arrays file .*damaged.npz: "):
        input_pipeline.load_split(str(tmp_path / "damaged.npz"), "test")
    np.save(tmp_path / "one.npy", np.zeros(3))
    os.rename(tmp_path / "one.npy", tmp_path / "one.npz")
    with pytest.raises(DatasetError, match=r"one.npz holds one array; it needs named arrays"):
        input_pipeline.load_split(str(tmp_path / "one.npz"), "test")


def test_a_header_that_claims_a_huge_shape_is_refused_before_numpy_allocates(tmp_path):
    """The sweep's file claimed 71 TiB and numpy tried to allocate it (a MemoryError
    traceback); the claim is checked against the bytes the archive stores."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**11, 28, 28, 1)})
    labels = io.BytesIO()
    np.save(labels, np.zeros(4, np.int64))
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("test_images.npy", header.getvalue() + bytes(4 * 784))
        archive.writestr("test_labels.npy", labels.getvalue())
    with pytest.raises(DatasetError, match=r"huge.npz: test_images claims shape "
                       r"\(100000000000, 28, 28, 1\) of uint8 \(78,400,000,000,000 bytes\), "
                       r"but the file stores 3,136$"):
        input_pipeline.load_split(str(tmp_path / "huge.npz"), "test")


def test_random_bytes_or_a_folder_are_named_as_such(tmp_path):
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DatasetError, match=r"random.npz: it is not an .npz archive") as error:
        input_pipeline.load_split(str(tmp_path / "random.npz"), "test")
    assert "pickle" not in str(error.value)
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(DatasetError, match=r"arrays file .*folder.npz is a folder, not a file"):
        input_pipeline.load_split(str(tmp_path / "folder.npz"), "test")


def test_save_refuses_images_that_are_not_8_bit(tmp_path):
    with pytest.raises(ValueError, match="the test images are not 8-bit pixel values"):
        arrays.save(str(tmp_path / "x.npz"), {"test": (np.full((2, 28, 28, 1), 0.3),
                                                       np.zeros(2))})
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    path = tmp_path / "data.npz"
    arrays.save(str(path), {"test": (np.zeros((2, 28, 28, 1), np.uint8), np.zeros(2))})
    before = path.read_bytes()

    def disk_full(file, **contents):
        file.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    with pytest.raises(OSError, match="No space left"):
        arrays.save(str(path), {"test": (np.ones((2, 28, 28, 1), np.uint8), np.zeros(2))})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["data.npz"]


def test_the_file_gets_the_permissions_of_any_new_file(tmp_path):
    umask = os.umask(0o022)
    try:
        arrays.save(str(tmp_path / "data.npz"),
                    {"test": (np.zeros((2, 28, 28, 1), np.uint8), np.zeros(2))})
    finally:
        os.umask(umask)
    assert (tmp_path / "data.npz").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("flags, message", [
    (["--out", "data.zip"], "--out data.zip: give a file ending in .npz"),
    (["--out", "/no/such/dir/data.npz"], "--out /no/such/dir/data.npz: /no/such/dir is not "
                                         "a directory"),
    (["--out", "x.npz", "--splits", "train[:10]"], "--splits train[:10]: 'train[:10]' is not "
                                                   "a plain split name"),
    (["--out", "x.npz", "--splits", "test,test"], "--splits test,test: a split is named twice"),
    (["--out", "x.npz", "--dataset", "other.npz"], "--dataset other.npz: give a tfds dataset "
                                                   "to export"),
])
def test_export_refuses_bad_flags_in_one_line(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.chdir(tmp_path)
    assert export_data.main(flags) == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m vae_jax.commands.export_data: error: ") and message in error
    assert error.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_reading_an_arrays_file_imports_no_tensorflow(exported, tmp_path):
    child = ("import sys; from vae_jax.data import input_pipeline; "
             f"images, _ = input_pipeline.load_split({exported!r}, 'test[:5]'); "
             "assert images.shape == (5, 28, 28, 1), images.shape; "
             "print(sorted(m for m in sys.modules if m.startswith('tensorflow')))")
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                            env=without_tensorflow_env(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.slow(reason="two training runs on real MNIST")
@requires_real_mnist
def test_a_run_on_the_arrays_file_is_the_run_on_tfds(tmp_path):
    assert export_data.main(["--data-dir", real_mnist_dir(), "--no-download", "--out",
                             str(tmp_path / "mnist.npz")]) == 0
    flags = ["--epochs", "2", "--batch-size", "32", "--no-progress", "--seed", "3",
             "--binarize", "dynamic", "--train-split", "train[:96]", "--test-split",
             "test[:40]"]
    assert train_command.main([*flags, "--data-dir", real_mnist_dir(), "--no-download",
                               "--workdir", str(tmp_path / "tfds")]) == 0
    assert train_command.main([*flags, "--dataset", str(tmp_path / "mnist.npz"),
                               "--workdir", str(tmp_path / "arrays")]) == 0
    chex.assert_trees_all_equal(full_state(tmp_path / "tfds"), full_state(tmp_path / "arrays"))


@pytest.mark.slow(reason="a training subprocess")
def test_train_py_runs_on_an_arrays_file_without_tensorflow(exported, tmp_path):
    env = without_tensorflow_env(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert "No module named 'tensorflow'" in blocked.stderr  # the stand-in works
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "train.py"), "--dataset", exported,
         "--batch-size", "10", "--epochs", "1", "--no-progress",
         "--workdir", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[1].startswith("epoch   1  train loss"), result.stdout
    evaluate = subprocess.run(
        [sys.executable, "-m", "vae_jax.commands.evaluate", "--workdir", str(tmp_path / "run"),
         "--iwae-samples", "5", "--split", "test[:8]"],
        capture_output=True, text=True, env=env, timeout=600)
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    assert "8 images" in evaluate.stdout, evaluate.stdout


def test_out_naming_a_directory_is_refused_before_any_data_is_read(tmp_path, monkeypatch,
                                                                   capsys):
    (tmp_path / "x.npz").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(export_data, "load_split", lambda *args, **kwargs: pytest.fail("read"))
    for flags in (["--out", "x.npz"], ["--out", "x.npz", "--overwrite"]):
        assert export_data.main(flags) == 2
        error = capsys.readouterr().err
        assert error == ("python -m vae_jax.commands.export_data: error: --out x.npz is a "
                         "directory; give the .npz file to write, e.g. x.npz/mnist.npz\n")
    assert os.listdir(tmp_path) == ["x.npz"]


def test_a_killed_writers_partial_file_is_removed_by_the_next_save(tmp_path):
    """A SIGKILL leaves `.partial-PID-NAME` behind (no handler runs): the next save of NAME
    removes it, and leaves a running writer's and other files' alone."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead_pid = int(finished.stdout)  # a process that has exited
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
        try:
            stale = tmp_path / f".partial-{dead_pid}-data.npz"
            live = tmp_path / f".partial-{running.pid}-data.npz"
            other = tmp_path / f".partial-{dead_pid}-other.npz"
            for path in (stale, live, other):
                path.write_bytes(b"half")
            arrays.save(str(tmp_path / "data.npz"),
                        {"test": (np.zeros((2, 28, 28, 1), np.uint8), np.zeros(2))})
            assert sorted(os.listdir(tmp_path)) == sorted(["data.npz", live.name, other.name])
        finally:
            running.kill()
