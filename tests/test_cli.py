"""The `train.py` command line: an end-to-end run, its outputs, and its refusals."""

import importlib.util
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import vae_jax
from tests.conftest import REPO_ROOT, real_mnist_dir, requires_real_mnist

METRIC_KEYS = {"epoch", "train_loss", "test_loss", "test_reconstruction", "test_kl",
               "images_per_sec", "seconds"}


def load_cli():
    spec = importlib.util.spec_from_file_location("train_cli", os.path.join(REPO_ROOT, "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "train.py"), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def mock_run(tmp_path_factory):
    """One short epoch of `train.py` on 40 mock images; returns the workdir."""
    workdir = tmp_path_factory.mktemp("run")
    with tfds.testing.mock_data(num_examples=40):
        status = load_cli().main(["--epochs", "1", "--batch-size", "16", "--workdir",
                                  str(workdir), "--data-dir", str(workdir / "data"),
                                  "--no-progress", "--seed", "3"])
    assert status == 0
    return workdir


def test_cli_run_writes_every_output(mock_run):
    names = set(os.listdir(mock_run))
    assert {"metrics.jsonl", "reconstructions_epoch1.png", "samples_epoch1.png",
            "checkpoints", "config.json"} <= names
    assert json.load(open(mock_run / "config.json")) == {"z_dim": 32, "im_chan": 1}
    records = [json.loads(line) for line in open(mock_run / "metrics.jsonl")]
    assert len(records) == 1 and METRIC_KEYS <= set(records[0])
    assert records[0]["epoch"] == 1 and records[0]["step"] == 3  # 16 + 16 + 8 images
    assert all(np.isfinite(records[0][key]) for key in METRIC_KEYS)
    np.testing.assert_allclose(records[0]["test_loss"],
                               records[0]["test_reconstruction"] + records[0]["test_kl"],
                               rtol=1e-5)
    for name in ("reconstructions_epoch1.png", "samples_epoch1.png"):
        with Image.open(mock_run / name) as picture:
            assert picture.format == "PNG" and min(picture.size) > 200


def test_cli_run_writes_tensorboard_scalars_and_images(mock_run):
    import tensorflow as tf  # reads the event files (tfds' dependency)
    scalars, images = {}, {}
    for path in (mock_run / "tensorboard").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.HasField("image"):
                    images[value.tag] = value.image
                else:
                    scalars[value.tag] = value.simple_value
    assert {"train/loss", "test/loss", "test/reconstruction", "test/kl",
            "speed/images_per_sec"} <= set(scalars)
    record = json.loads(open(mock_run / "metrics.jsonl").readline())
    np.testing.assert_allclose(scalars["test/loss"], record["test_loss"], rtol=1e-6)
    assert set(images) == {"reconstructions", "samples"}
    assert images["reconstructions"].width == 2 * images["reconstructions"].height


def test_saved_variables_load_and_run(mock_run):
    variables = vae_jax.load_variables(str(mock_run))
    assert set(variables) == {"params", "batch_stats"}
    expected = jax.eval_shape(
        lambda key, x: vae_jax.VAE().init(key, x, key, train=False), jax.random.key(0),
        np.zeros((1, 28, 28, 1), np.float32))
    chex.assert_trees_all_equal_shapes(variables, expected)
    chex.assert_tree_all_finite(variables)
    logits, _, _ = vae_jax.VAE().apply(variables, np.zeros((2, 28, 28, 1), np.float32),
                                       jax.random.key(0), train=False)
    chex.assert_shape(logits, (2, 28, 28, 1))


def test_missing_variables_error_names_the_dir(tmp_path):
    with pytest.raises(ValueError, match=f"no saved variables in {tmp_path}"):
        vae_jax.load_variables(str(tmp_path))


def test_platform_gpu_without_a_gpu_is_refused_in_one_line():
    try:
        has_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        has_gpu = False
    if has_gpu:
        pytest.skip("this machine has a GPU")
    result = run_cli("--platform", "gpu", "--epochs", "1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "GPU" in lines[0] and "pip install" in lines[0] and "cuda" in lines[0]


@pytest.mark.parametrize("args, flag", [
    (["--epochs", "0"], "--epochs"), (["--batch-size", "-3"], "--batch-size"),
    (["--learning-rate", "fast"], "--learning-rate"), (["--platform", "quantum"], "--platform"),
])
def test_bad_flags_exit_2_with_one_line(args, flag):
    with pytest.raises(SystemExit) as exit_info:
        load_cli().parse_args(args)
    assert exit_info.value.code == 2


def test_bad_flag_message_is_one_line():
    result = run_cli("--epochs", "-1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "train.py: error: argument --epochs: must be positive, got -1"]


def test_missing_dataset_is_one_line(tmp_path):
    result = run_cli("--dataset", "kmnist", "--data-dir", str(tmp_path), "--no-download",
                     "--workdir", str(tmp_path / "run"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (f"train.py: error: dataset 'kmnist' is not prepared in {tmp_path} "
                         f"and downloading is off"), result.stderr
    assert "Traceback" not in result.stderr


@requires_real_mnist
def test_real_mnist_short_run_learns(tmp_path):
    result = run_cli("--epochs", "2", "--batch-size", "256", "--train-split", "train[:4096]",
                     "--test-split", "test[:1024]", "--workdir", str(tmp_path), "--no-progress",
                     "--data-dir", real_mnist_dir())
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    # 784 * log(2) = 543 nats is what predicting 0.5 everywhere costs.
    assert records[1]["train_loss"] < records[0]["train_loss"] < 543
    assert records[1]["test_loss"] < 543
