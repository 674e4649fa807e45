"""The training command (`train.py`, `python -m vae_jax.commands.train`): an end-to-end run, its
outputs, and its refusals."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import vae_jax
from tests.helpers import REPO_ROOT, real_mnist_dir, requires_real_mnist
from vae_jax.commands import train as train_command
from vae_jax.data import input_pipeline
from vae_jax.evaluation import elbo
from vae_jax.model.vae import variable_shapes
from vae_jax.training import loop, steps, train_state

METRIC_KEYS = {"epoch", "train_loss", "test_loss", "test_reconstruction", "test_kl",
               "images_per_sec", "seconds"}


def run_main(capsys, *args):
    """`vae_jax.commands.train.main(args)` in this process: (exit code, stderr lines)."""
    status = train_command.main(list(args))
    return status, capsys.readouterr().err.strip().splitlines()


MOCK_RUN_FLAGS = ["--batch-size", "16", "--no-progress", "--seed", "3"]
SCREENS = {}  # what each run of the module printed, by workdir


def run_on_mock_data(workdir, *flags) -> int:
    """`train.py` on 40 mock images in this process; its stdout lines go to SCREENS."""
    screen = io.StringIO()
    with tfds.testing.mock_data(num_examples=40), contextlib.redirect_stdout(screen):
        status = train_command.main([*MOCK_RUN_FLAGS, "--workdir", str(workdir),
                                     "--data-dir", str(workdir) + "-data", *flags])
    SCREENS[str(workdir)] = screen.getvalue().splitlines()
    return status


@pytest.fixture(scope="module")
def mock_run(tmp_path_factory):
    """One short epoch of `train.py` on 40 mock images; returns the workdir."""
    workdir = tmp_path_factory.mktemp("run")
    assert run_on_mock_data(workdir, "--epochs", "1") == 0
    return workdir


def test_the_first_line_names_the_workdir_and_the_last_two_what_was_written_and_next(
        mock_run):
    screen = SCREENS[str(mock_run)]
    assert screen[0].startswith(f"training in {mock_run} on cpu, 1 device"), screen
    assert screen[-2:] == [
        f"wrote {mock_run}: checkpoint at step 3, metrics.jsonl, reconstructions_epoch1.png, "
        f"samples_epoch1.png, tensorboard/",
        f"next: vae-jax-evaluate --workdir {mock_run}  |  vae-jax-explore --workdir {mock_run}"]
    for name in ("metrics.jsonl", "reconstructions_epoch1.png", "samples_epoch1.png",
                 "tensorboard"):
        assert os.path.exists(mock_run / name), name


def test_a_resumed_run_says_so_first(mock_run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(mock_run, resumed)
    assert run_on_mock_data(resumed, "--epochs", "2") == 0
    screen = SCREENS[str(resumed)]
    assert screen[0] == (f"resuming the run in {resumed} from its checkpoint at step 3 "
                         f"(epoch 2, batch 0)")
    assert screen[-2].startswith(f"wrote {resumed}: checkpoint at step 6, ")


def test_cli_run_writes_every_output(mock_run):
    names = set(os.listdir(mock_run))
    assert {"metrics.jsonl", "reconstructions_epoch1.png", "samples_epoch1.png",
            "checkpoints", "config.json"} <= names
    config = json.load(open(mock_run / "config.json"))
    assert {key: config[key] for key in ("z_dim", "im_chan")} == {"z_dim": 32, "im_chan": 1}
    assert (config["seed"], config["batch_size"], config["epochs"]) == (3, 16, 1)
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
            "speed/images_per_sec", "schedule/learning_rate", "schedule/kl_weight"} <= set(scalars)
    record = json.loads(open(mock_run / "metrics.jsonl").readline())
    np.testing.assert_allclose(scalars["test/loss"], record["test_loss"], rtol=1e-6)
    assert (scalars["schedule/learning_rate"], scalars["schedule/kl_weight"]) == (
        pytest.approx(2e-3), 1.0)
    assert set(images) == {"reconstructions", "samples"}
    assert images["reconstructions"].width == 2 * images["reconstructions"].height


def test_test_loss_is_evaluates_negative_elbo(mock_run):
    """metrics.jsonl's test loss is `elbo.neg_elbo` of the test split, with the run's
    evaluation key for the epoch: one function for both numbers."""
    record = json.loads(open(mock_run / "metrics.jsonl").readline())
    with tfds.testing.mock_data(num_examples=40):
        test_images, _ = input_pipeline.load_split("mnist", "test", str(mock_run / "data"))
    model, variables, config = vae_jax.load_model(str(mock_run))
    test_loss = elbo.neg_elbo(model, variables, test_images,
                               jax.random.fold_in(
                                  train_state.RunKeys.from_seed(config["seed"]).eval, 1),
                              batch_size=config["batch_size"]).averages()
    chex.assert_trees_all_close(
        test_loss, {name: record[f"test_{name}"] for name in ("loss", "reconstruction", "kl")},
        rtol=1e-6)


def test_saved_variables_load_and_run(mock_run):
    variables = vae_jax.load_variables(str(mock_run))
    assert set(variables) == {"params", "batch_stats"}
    chex.assert_trees_all_equal_shapes(variables, variable_shapes(vae_jax.VAE()))
    chex.assert_tree_all_finite(variables)
    logits, _, _ = vae_jax.VAE().apply(variables, np.zeros((2, 28, 28, 1), np.float32),
                                       jax.random.key(0), train=False)
    chex.assert_shape(logits, (2, 28, 28, 1))


def test_missing_variables_error_names_the_dir(tmp_path):
    with pytest.raises(ValueError, match=f"no saved variables in {tmp_path}"):
        vae_jax.load_variables(str(tmp_path))


def test_platform_gpu_without_a_gpu_is_refused_in_one_line():
    """A real process: JAX's platform can be chosen once per process, before it starts."""
    try:
        has_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        has_gpu = False
    if has_gpu:
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "train.py"), "--platform",
                             "gpu", "--epochs", "1"], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "GPU" in lines[0] and "pip install" in lines[0] and "cuda" in lines[0]


@pytest.mark.parametrize("args, flag", [
    (["--epochs", "0"], "--epochs"), (["--batch-size", "-3"], "--batch-size"),
    (["--learning-rate", "fast"], "--learning-rate"), (["--platform", "quantum"], "--platform"),
])
def test_bad_flags_exit_2_with_one_line(args, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_command.build_parser().parse_args(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0]


def test_bad_flag_message_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_command.main(["--epochs", "-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "train.py: error: argument --epochs: must be positive, got -1"]


def test_missing_dataset_is_one_line(tmp_path, capsys):
    status, lines = run_main(capsys, "--dataset", "kmnist", "--data-dir", str(tmp_path),
                             "--no-download", "--workdir", str(tmp_path / "run"))
    assert status == 2
    assert lines[-1] == (f"train.py: error: dataset 'kmnist' is not prepared in {tmp_path} "
                         f"and downloading is off"), lines
    assert not (tmp_path / "run").exists()


@pytest.mark.slow(reason="trains the command in both epoch modes")
def test_a_run_compiles_its_step_twice_and_its_scan_once(tmp_path, monkeypatch):
    """A run's steps compile once per batch shape (the full batch and the last, smaller one),
    and a scan epoch once for every epoch."""
    monkeypatch.setattr(loop, "make_train_step", lambda **kwargs: (
        steps.make_train_step(max_traces=2, **kwargs)))
    monkeypatch.setattr(loop, "make_train_epoch", lambda batch_size, **kwargs: (
        steps.make_train_epoch(batch_size, max_traces=1, **kwargs)))
    with tfds.testing.mock_data(num_examples=40):
        for mode in ("steps", "scan"):
            status = train_command.main(["--epochs", "2", "--batch-size", "16",
                                         "--epoch-mode", mode,
                                         "--workdir", str(tmp_path / mode), "--no-progress",
                                         "--data-dir", str(tmp_path / "data")])
            assert status == 0


@pytest.mark.slow(reason="real MNIST")
@requires_real_mnist
def test_real_mnist_short_run_learns(tmp_path):
    status = train_command.main(["--epochs", "2", "--batch-size", "256",
                                 "--train-split", "train[:4096]",
                                 "--test-split", "test[:1024]", "--workdir", str(tmp_path),
                                 "--no-progress", "--data-dir", real_mnist_dir()])
    assert status == 0
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    # 784 * log(2) = 543 nats is what predicting 0.5 everywhere costs.
    assert records[1]["train_loss"] < records[0]["train_loss"] < 543
    assert records[1]["test_loss"] < 543
