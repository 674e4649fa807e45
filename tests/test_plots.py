"""`python -m vae_jax.commands.plots`: the four pictures, and the helpers behind them."""

import json
import os

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tests.helpers import save_untrained
from vae_jax.checkpoints.saved_model import load_model
from vae_jax.commands import plots as plots_command
from vae_jax.evaluation import grids, plots

PICTURES = ("training_curves.png", "interpolations.png", "latent_map.png", "kl_per_dim.png")


@pytest.fixture(scope="module")
def plotted_run(tmp_path_factory):
    """An untrained model with a two-epoch metrics.jsonl, plotted on 30 mock images."""
    workdir = tmp_path_factory.mktemp("run")
    save_untrained(workdir)
    with open(workdir / "metrics.jsonl", "w") as f:
        for epoch, (train, test) in enumerate(((209.2, 149.5), (132.9, 121.2)), start=1):
            f.write(json.dumps({"epoch": epoch, "train_loss": train, "test_loss": test}) + "\n")
    with tfds.testing.mock_data(num_examples=30):
        status = plots_command.main(["--workdir", str(workdir),
                                     "--data-dir", str(workdir / "data")])
    assert status == 0
    return workdir


@pytest.mark.parametrize("name, min_size", [
    ("training_curves.png", (400, 250)), ("interpolations.png", (500, 400)),
    ("latent_map.png", (500, 450)), ("kl_per_dim.png", (500, 250))])
def test_each_picture_is_a_sensible_png(plotted_run, name, min_size):
    with Image.open(plotted_run / name) as picture:
        assert picture.format == "PNG"
        width, height = picture.size
        assert width >= min_size[0] and height >= min_size[1]
        assert width <= 3000 and height <= 3000
        colours = np.asarray(picture.convert("L"))
    assert colours.std() > 5  # not blank


def test_without_metrics_the_curves_are_skipped(tmp_path, capsys):
    save_untrained(tmp_path)
    model, variables, _ = load_model(str(tmp_path))
    images = np.random.default_rng(0).uniform(size=(12, 28, 28, 1)).astype(np.float32)
    written = plots.make_plots(str(tmp_path), model, variables, images, np.arange(12) % 10)
    assert [p.rsplit("/", 1)[1] for p in written] == list(PICTURES[1:])
    assert "no training curves" in capsys.readouterr().out


@pytest.mark.parametrize("flags, binary", [([], False), (["--binarize", "dynamic"], True)])
def test_the_encoder_sees_binary_images_when_binarized(tmp_path, monkeypatch, flags, binary):
    save_untrained(tmp_path)
    seen = []
    monkeypatch.setattr(plots_command, "make_plots",
                        lambda workdir, model, variables, images, labels: seen.append(images)
                        or [])
    with tfds.testing.mock_data(num_examples=10):
        assert plots_command.main(["--workdir", str(tmp_path), "--data-dir", str(tmp_path / "data"),
                                   *flags]) == 0
    (images,) = seen
    chex.assert_shape(images, (10, 28, 28, 1))
    assert np.isin(images, (0.0, 1.0)).all() == binary


def curves_figure(records, monkeypatch):
    """The matplotlib figure plot_training_curves draws for `records`."""
    saved = []
    monkeypatch.setattr(grids, "save_figure", lambda figure, path: saved.append(figure))
    plots.plot_training_curves(records, "unused.png")
    return saved[0]


def test_long_runs_get_a_panel_without_the_first_epochs(monkeypatch):
    records = [{"epoch": epoch, "train_loss": 90 + 120 / epoch, "test_loss": 92 + 60 / epoch}
               for epoch in range(1, 101)]
    short = curves_figure(records[:plots.ZOOM_AFTER_EPOCHS], monkeypatch)
    assert len(short.axes) == 1
    assert short.axes[0].get_xlim() == (0.5, plots.ZOOM_AFTER_EPOCHS + 0.5)
    full, zoomed = curves_figure(records, monkeypatch).axes
    assert full.get_xlim() == (0.5, 100.5)
    assert zoomed.get_xlim() == (10.5, 100.5)
    assert zoomed.get_ylim()[1] < 90 + 120 / 10  # epoch 1-10's losses don't set the scale
    assert zoomed.get_title() == "from epoch 11"


def test_importance_weighted_runs_also_show_their_objective(monkeypatch):
    elbo_run = [{"epoch": epoch, "train_loss": 100.0 - epoch, "test_loss": 101.0 - epoch}
                for epoch in range(1, 6)]
    labels = [line.get_label() for line in curves_figure(elbo_run, monkeypatch).axes[0].lines]
    assert not any("objective" in label for label in labels)
    dreg_run = [dict(record, test_objective=95.0 - record["epoch"]) for record in elbo_run]
    (axis,) = curves_figure(dreg_run, monkeypatch).axes
    (objective,) = [line for line in axis.lines if "objective" in line.get_label()]
    np.testing.assert_allclose(objective.get_ydata(), [94, 93, 92, 91, 90])
    assert {text.get_text() for text in axis.texts} == {"96.0", "90.0"}  # the last test values


def test_pca_keeps_the_two_main_directions():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(500, 5)) * np.array([5.0, 0.01, 2.0, 0.01, 0.01])
    projected, explained = plots.pca_2d(points)
    assert projected.shape == (500, 2) and explained > 0.99
    np.testing.assert_allclose(np.abs(np.corrcoef(projected[:, 0], points[:, 0])[0, 1]), 1,
                               atol=1e-3)
    two, kept = plots.pca_2d(points[:, :2])
    np.testing.assert_array_equal(two, points[:, :2])
    assert kept == 1.0


def test_interpolation_runs_from_start_to_end():
    path = plots.interpolate(np.zeros(3), np.array([1.0, 2.0, 4.0]), 5)
    np.testing.assert_allclose(path[0], 0)
    np.testing.assert_allclose(path[-1], [1, 2, 4])
    np.testing.assert_allclose(path[2], [0.5, 1, 2])


def test_pairs_are_of_the_chosen_digits_and_distinct_images():
    labels = np.array([3, 0, 6, 1, 7, 2, 8, 4, 9, 5, 3, 8, 7, 9, 1, 4])
    pairs = plots.choose_pairs(labels)
    assert [(labels[a], labels[b]) for a, b in pairs[:5]] == list(plots.DIGIT_PAIRS[:5])
    flat = [index for pair in pairs for index in pair]
    assert len(set(flat)) == len(flat)


@pytest.mark.parametrize("command", ["plots", "sample"])
def test_pretrained_in_a_folder_it_cannot_write_names_the_folder_not_workdir(
        tmp_path, monkeypatch, capsys, command):
    from vae_jax.commands import sample as sample_command
    here = str(tmp_path)
    monkeypatch.chdir(here)
    real_access = os.access  # root may write anywhere: the read-only folder is simulated
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: False
                        if os.path.abspath(path) == here else real_access(path, mode, **kwargs))
    main = plots_command.main if command == "plots" else sample_command.main
    assert main(["--pretrained", "course"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        f"error: --pretrained course writes into the current directory, and {here} is not "
        f"writable: cd to a folder you can write to"), err
    assert os.listdir(here) == []
