"""The models that ship with the package (vae_jax.pretrained): each loads with its digests
verified, reproduces its recorded fingerprint (and, where real MNIST is at hand, its
recorded ELBO on the test split), a binarized one records its K = 5000 bound,
scripts/make_pretrained.py writes such a model, and the commands take --pretrained NAME."""

import json
import os
import shutil
import sys

import chex
import jax
import numpy as np
import pytest

from tests.helpers import load_repository_module, requires_real_mnist, untrained_variables
from vae_jax import pretrained
from vae_jax.checkpoints.run_checkpoints import CheckpointError
from vae_jax.checkpoints.saved_model import load_model
from vae_jax.commands import sample as sample_command
from vae_jax.data import arrays
from vae_jax.evaluation.elbo import neg_elbo
from vae_jax.pretrained.fingerprint import fingerprint, fingerprint_images
from vae_jax.runtime.errors import InputError

NAMES = pretrained.names()


def test_the_course_model_and_a_binarized_one_ship():
    assert "course" in NAMES and "binarized" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_model_loads_and_reproduces_its_fingerprint(name):
    model, variables, config = pretrained.load(name)
    card = pretrained.card(name)
    assert card["command"].startswith("python train.py") and card["hardware"]
    assert "data_dir" not in config and config["z_dim"] == model.z_dim
    chex.assert_tree_all_finite(variables)
    recorded = card["fingerprint"]
    got = fingerprint(model, variables, recorded["binarize"])
    np.testing.assert_allclose(got["neg_elbo"], recorded["neg_elbo"], atol=2e-3)
    size = sum(os.path.getsize(os.path.join(root, file))
               for root, _, files in os.walk(pretrained.path(name)) for file in files)
    assert size < 8 * 2**20  # a few MB each


@pytest.mark.parametrize("name", NAMES)
def test_each_model_gives_its_numbers_on_real_test_digits_shipped_with_the_tests(name):
    """On every machine: the first 500 MNIST test digits ship in tests/data
    (scripts/make_test_digits.py). The model gives the numbers recorded for them there, and
    its card's ELBO on the whole test split lies within four standard errors of a 500-image
    mean (the card's standard error, scaled from 10,000 images to 500)."""
    script = load_repository_module("scripts", "make_test_digits.py")
    images, _ = arrays.load_split(str(script.DIGITS), "test")
    chex.assert_shape(images, (script.COUNT, 28, 28, 1))
    got = script.model_numbers(name, images)
    recorded = json.loads(script.RECORDED.read_text())[name]
    chex.assert_trees_all_close(got, {key: recorded[key] for key in got}, atol=1e-2)
    results = pretrained.card(name)["results"]
    spread = results["neg_elbo_stderr"] * (results["num_images"] / script.COUNT) ** 0.5
    assert abs(got["loss"] - results["neg_elbo"]) < 4 * spread, (got, results["neg_elbo"])


@requires_real_mnist
@pytest.mark.parametrize("name", NAMES)
def test_each_model_reaches_its_recorded_elbo_on_a_slice_of_the_test_set(name):
    from vae_jax.data.input_pipeline import load_split
    from vae_jax.evaluation.elbo import neg_elbo
    model, variables, _ = pretrained.load(name)
    results = pretrained.card(name)["results"]
    images, _ = load_split("mnist", results["split"], download=False)
    full = neg_elbo(model, variables, images, jax.random.key(results["seed"]), batch_size=100,
                    binarize_mode=results["binarize"]).averages()["loss"]
    np.testing.assert_allclose(full, results["neg_elbo"], atol=1e-2)


@pytest.mark.parametrize("name", [name for name in NAMES
                                  if pretrained.card(name)["results"]["binarize"] != "none"])
def test_each_binarized_model_records_its_k5000_bound_on_the_same_test_set(name):
    """The number that compares with the literature: K = 5000, as `likelihood`."""
    card = pretrained.card(name)
    results, likelihood = card["results"], card["likelihood"]
    for key in ("dataset", "split", "binarize", "num_images"):
        assert likelihood[key] == results[key], key
    assert likelihood["iwae_samples"] > results["iwae_samples"]
    # More importance samples can only tighten the bound (up to the estimates' noise).
    assert likelihood["nll_iwae"] < results["nll_iwae"] + 3 * results["nll_iwae_stderr"]
    assert likelihood["nll_iwae"] < likelihood["neg_elbo"]


@pytest.mark.slow(reason="K = 5000 on 100 images for each binarized model")
@pytest.mark.parametrize("name", [name for name in NAMES if "likelihood" in pretrained.card(name)])
def test_each_k5000_bound_is_its_models_on_real_test_digits(name):
    """The card's K = 5000 bound tied to the weights: on the first 100 of the shipped test
    digits, the model gives the bound recorded for them, and its gap to the ELBO (a paired
    difference, far less noisy than either number) is the card's within 2 nats (measured:
    0.9 and 0.2; the two binarized models' gaps are 7 and 11 nats)."""
    script = load_repository_module("scripts", "make_test_digits.py")
    images, _ = arrays.load_split(str(script.DIGITS), "test")
    got = script.likelihood_numbers(name, images)
    recorded = json.loads(script.RECORDED.read_text())[name]["likelihood"]
    chex.assert_trees_all_close(got, recorded, atol=2e-2)
    card = pretrained.card(name)["likelihood"]
    assert abs((got["neg_elbo"] - got["nll_iwae"]) - (card["neg_elbo"] - card["nll_iwae"])) < 2


def test_make_pretrained_saves_a_loadable_model_with_its_card(uninterrupted, tmp_path,
                                                             monkeypatch):
    script = load_repository_module("scripts", "make_pretrained.py")
    monkeypatch.setattr(script, "DIRECTORY", str(tmp_path))  # not into the package
    evaluation = {"neg_elbo": 101.5, "nll_iwae": 97.0, "iwae_samples": 50, "split": "test",
                  "seconds": 12.0, "workdir": "/somewhere/else"}
    (tmp_path / "k50.json").write_text(json.dumps(evaluation))
    (tmp_path / "k5000.json").write_text(json.dumps({**evaluation, "iwae_samples": 5000}))
    monkeypatch.setattr(sys, "argv", [
        "make_pretrained.py", "tiny", "--workdir", str(uninterrupted),
        "--command", "python train.py --epochs 3", "--hardware", "a CPU",
        "--wall-time", "1 s", "--description", "three epochs on mock data",
        "--results", str(tmp_path / "k50.json"), "--likelihood", str(tmp_path / "k5000.json")])
    script.main()
    saved = tmp_path / "tiny"
    card = json.loads((saved / pretrained.CARD_FILE).read_text())
    assert card["results"] == {"neg_elbo": 101.5, "nll_iwae": 97.0, "iwae_samples": 50,
                               "split": "test"}  # the machine's details left out
    assert card["likelihood"]["iwae_samples"] == 5000
    model, variables, config = load_model(str(saved))
    assert "data_dir" not in config
    run_model, run_variables, _ = load_model(str(uninterrupted))
    chex.assert_trees_all_equal(variables, run_variables)
    # The card's fingerprint is the run's negative ELBO on the fingerprint images, computed
    # here without `fingerprint` (and in batches of 8), and no other model's.
    recorded = card["fingerprint"]
    assert recorded == {"neg_elbo": recorded["neg_elbo"], "images": 64, "seed": 0,
                        "binarize": "none"}
    direct = neg_elbo(run_model, run_variables, fingerprint_images(), jax.random.key(0),
                      batch_size=8).averages()["loss"]
    np.testing.assert_allclose(recorded["neg_elbo"], direct, atol=2e-3)
    other = fingerprint(model, untrained_variables())["neg_elbo"]
    assert abs(other - recorded["neg_elbo"]) > 1.0


def test_a_damaged_pretrained_model_is_refused_in_one_line(tmp_path):
    copy = tmp_path / "course"
    shutil.copytree(pretrained.path("course"), copy)
    digests = copy / "variables" / "digests.json"
    recorded = json.loads(digests.read_text())
    first = sorted(recorded)[0]
    recorded[first] = "0" * len(recorded[first])
    digests.write_text(json.dumps(recorded))
    with pytest.raises(CheckpointError, match="cannot read variables in"):
        load_model(str(copy))


def test_an_unknown_name_is_one_line():
    with pytest.raises(InputError, match="no pretrained model 'nope'; there are: "):
        pretrained.load("nope")


def test_sample_takes_pretrained_and_writes_into_the_current_directory(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.chdir(tmp_path)
    assert sample_command.main(["--pretrained", "course", "--num", "4", "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "samples_seed1.png")
    with pytest.raises(SystemExit):  # one of the two, not both
        sample_command.main(["--pretrained", "course", "--workdir", str(tmp_path)])
    assert "not allowed with argument" in capsys.readouterr().err
