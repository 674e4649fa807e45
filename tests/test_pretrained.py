"""The models that ship with the package (vae_jax.pretrained): each loads with its digests
verified, reproduces its recorded fingerprint (and, where real MNIST is at hand, its
recorded ELBO on the test split), and the commands take --pretrained NAME."""

import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest

from tests.helpers import requires_real_mnist
from vae_jax import pretrained
from vae_jax.checkpoints.run_checkpoints import CheckpointError
from vae_jax.checkpoints.saved_model import load_model
from vae_jax.commands import sample as sample_command
from vae_jax.pretrained.fingerprint import fingerprint
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
