"""`python -m vae_jax.commands.sample`: a PNG grid of prior samples, reproducible by seed."""

import jax
import numpy as np
import pytest
from PIL import Image

from tests.helpers import save_untrained
from vae_jax.checkpoints.saved_model import load_model
from vae_jax.commands import sample as sample_command
from vae_jax.evaluation import elbo, likelihood, sampling


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("model")
    save_untrained(workdir)
    return workdir


def pixels(path):
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture.convert("RGB"))


def test_sample_writes_a_grid_and_the_seed_fixes_the_pixels(saved_model, tmp_path, capsys):
    paths = [tmp_path / name for name in ("a.png", "b.png", "c.png")]
    for path, seed in zip(paths, (5, 5, 6)):
        assert sample_command.main(["--workdir", str(saved_model), "--num", "16",
                                    "--seed", str(seed), "--out", str(path)]) == 0
    assert capsys.readouterr().out.split() == [str(path) for path in paths]
    first = pixels(paths[0])
    height, width = first.shape[:2]
    assert 300 <= width <= 600 and 300 <= height <= 650  # a 5x5.3 inch figure at 100 dpi
    np.testing.assert_array_equal(first, pixels(paths[1]))
    assert not np.array_equal(first, pixels(paths[2]))


def test_default_output_goes_into_the_workdir(saved_model, capsys):
    assert sample_command.main(["--workdir", str(saved_model), "--num", "16", "--seed", "2"]) == 0
    assert (saved_model / "samples_seed2.png").exists()


def test_sample_images_are_decoded_prior_samples(saved_model):
    model, variables, _ = load_model(str(saved_model))
    images = sampling.sample_images(model, variables, jax.random.key(3), 16)
    assert images.shape == (16, 28, 28, 1) and images.min() >= 0 and images.max() <= 1
    z = jax.random.normal(jax.random.key(3), (16, 32))
    expected = jax.nn.sigmoid(likelihood.jitted_decoder(model)(variables, z))
    np.testing.assert_allclose(images, expected, atol=1e-6)


def test_missing_workdir_exits_2_in_one_line(tmp_path, capsys):
    assert sample_command.main(["--workdir", str(tmp_path / "none")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        sample_command.main(["--workdir", str(tmp_path), "--num", "0"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("call, message", [
    (lambda m, v: sampling.sample_images(m, v, jax.random.key(0), 0), "num must be a positive "
                                                                      "integer, got 0"),
    (lambda m, v: sampling.sample_images(m, v, jax.random.key(0), -3), "got -3"),
    (lambda m, v: sampling.sample_images(m, v, jax.random.key(0), 4, batch_size=0),
     "batch_size must be a positive integer, got 0"),
    (lambda m, v: elbo.encode(m, v, np.zeros((0, 28, 28, 1), np.float32)),
     r"images must be a non-empty \(N, 28, 28, channels\) array, got shape \(0, 28, 28, 1\)"),
    (lambda m, v: elbo.encode(m, v, np.zeros((28, 28), np.float32)), r"shape \(28, 28\)"),
    (lambda m, v: elbo.encode(m, v, np.zeros((2, 28, 28, 1), np.float32), batch_size=0),
     "batch_size must be a positive integer, got 0"),
    (lambda m, v: elbo.neg_elbo(m, v, np.zeros((0, 28, 28, 1), np.float32),
                                jax.random.key(0), batch_size=4), "non-empty"),
], ids=["num 0", "num -3", "batch_size 0", "no images", "one image without axes",
        "encode batch_size 0", "neg_elbo of no images"])
def test_the_notebook_helpers_refuse_bad_arguments_in_one_line(saved_model, call, message):
    model, variables, _ = load_model(str(saved_model))
    with pytest.raises(elbo.EvaluationError, match=message):
        call(model, variables)
