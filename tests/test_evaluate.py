"""Evaluation over a dataset (the negative ELBO and IWAE passes) and the
`python -m vae_jax.commands.evaluate` command line."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.helpers import save_untrained, tiny_config, untrained_variables
from vae_jax import pretrained
from vae_jax.checkpoints import run_checkpoints
from vae_jax.checkpoints.config_file import write_config_file
from vae_jax.checkpoints.saved_model import training_binarize
from vae_jax.commands import evaluate as evaluate_command
from vae_jax.evaluation import likelihood
from vae_jax.model.binarize import binarize

NUM_MOCK = 12


def test_binarize_is_bernoulli_of_the_pixels():
    images = jnp.broadcast_to(jnp.linspace(0, 1, 5)[None, :, None, None], (4000, 5, 1, 1))
    binary = binarize(jax.random.key(0), images)
    assert binary.dtype == jnp.float32 and set(np.unique(binary)) <= {0.0, 1.0}
    np.testing.assert_allclose(binary.mean(axis=(0, 2, 3)), np.linspace(0, 1, 5), atol=0.03)
    np.testing.assert_array_equal(binary, binarize(jax.random.key(0), images))
    assert not np.array_equal(binary, binarize(jax.random.key(1), images))


# --- the command line ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("model")
    save_untrained(workdir)
    return workdir


def run_main(capsys, *args):
    with tfds.testing.mock_data(num_examples=NUM_MOCK):
        status = evaluate_command.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("binarize_mode", ["none", "dynamic"])
def test_cli_json(saved_model, tmp_path, capsys, binarize_mode):
    status, out, err = run_main(
        capsys, "--workdir", str(saved_model), "--iwae-samples", "4", "--json", "--batch-size",
        "5", "--data-dir", str(tmp_path), "--binarize", binarize_mode, "--no-progress")
    assert status == 0, err
    result = json.loads(out)
    assert {"neg_elbo", "neg_elbo_stderr", "nll_iwae", "iwae_samples", "active_units",
            "kl_per_dim", "seconds"} <= set(result)
    assert result["iwae_samples"] == 4 and result["num_images"] == NUM_MOCK
    assert result["binarize"] == binarize_mode and len(result["kl_per_dim"]) == 32
    assert 0 <= result["active_units"] <= 32
    # An untrained decoder gives about 784 * log 2 = 543 nats per image.
    assert 400 < result["nll_iwae"] < 700 and 400 < result["neg_elbo"] < 700
    assert abs(result["nll_iwae"] - result["neg_elbo"]) < 5
    np.testing.assert_allclose(result["neg_elbo"], result["reconstruction"] + result["kl"],
                               rtol=1e-5)
    np.testing.assert_allclose(sum(result["kl_per_dim"]), result["kl"], rtol=1e-4)


def test_a_result_names_its_model_by_run_directory_or_pretrained_name(saved_model, tmp_path,
                                                                      capsys):
    common = ["--iwae-samples", "2", "--batch-size", "5", "--data-dir", str(tmp_path),
              "--no-progress"]
    status, out, err = run_main(capsys, "--workdir", str(saved_model), "--json", *common)
    assert status == 0, err
    result = json.loads(out)
    assert result["workdir"] == str(saved_model.resolve()) and result["pretrained"] is None
    status, out, err = run_main(capsys, "--pretrained", "course", "--json", *common)
    assert status == 0, err
    result = json.loads(out)  # no installation's path: results from any two installs pool
    assert result["workdir"] is None and result["pretrained"] == "course"
    status, out, err = run_main(capsys, "--pretrained", "course", *common)
    assert status == 0, err
    assert "from the pretrained model course" in out.splitlines()[0]


def test_cli_summary_is_human_readable(saved_model, tmp_path, capsys):
    status, out, _ = run_main(capsys, "--workdir", str(saved_model), "--iwae-samples", "4",
                              "--batch-size", "5", "--data-dir", str(tmp_path), "--no-progress")
    assert status == 0
    assert "negative ELBO" in out and "IWAE, K=4" in out and "active units" in out
    assert "not log-likelihoods" in out


@pytest.mark.parametrize("args, words", [
    (["--iwae-samples", "0"], "--iwae-samples"),
    (["--iwae-samples", "many"], "--iwae-samples"),
    (["--binarize", "static"], "--binarize"),
])
def test_bad_flags_exit_2_in_one_line(saved_model, capsys, args, words):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_command.main(["--workdir", str(saved_model), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_missing_workdir_and_variables_exit_2_in_one_line(tmp_path, capsys):
    assert evaluate_command.main(["--workdir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "not a directory" in err[0]
    assert evaluate_command.main(["--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no saved variables" in err[0]


@pytest.mark.parametrize("config, named", [
    ({"z_dim": 8, "im_chan": 1}, "z_dim=8"),
    # A width whose model JAX could not even trace: refused before any model is built, so no
    # JAX dtype warning comes first.
    ({"z_dim": 32, "im_chan": 1, "hidden_dim": 10**10}, "hidden_dim=10000000000"),
])
def test_variables_that_do_not_fit_the_config_exit_2(saved_model, tmp_path, capsys, recwarn,
                                                     config, named):
    workdir = tmp_path / "mismatch"
    shutil.copytree(saved_model, workdir)
    (workdir / "config.json").write_text(json.dumps(config))
    assert evaluate_command.main(["--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"do not fit a VAE with z_dim={config['z_dim']}" in err[0]
    assert named in err[0]
    assert [str(warning.message) for warning in recwarn] == []


def test_binarize_defaults_to_what_the_run_trained_with(tmp_path, capsys):
    settings = {**tiny_config(binarize="dynamic").to_json()}
    with run_checkpoints.RunCheckpoints(str(tmp_path)) as run:
        run.save(1, untrained_variables(), {"step": np.zeros((), np.int32)})
    write_config_file(str(tmp_path), settings)
    assert training_binarize(str(tmp_path)) == "dynamic"
    common = ["--workdir", str(tmp_path), "--iwae-samples", "4", "--json", "--batch-size", "5",
              "--data-dir", str(tmp_path / "data"), "--no-progress"]
    status, out, err = run_main(capsys, *common)
    assert status == 0, err
    assert json.loads(out)["binarize"] == "dynamic"
    status, out, _ = run_main(capsys, *common, "--binarize", "none")
    assert json.loads(out)["binarize"] == "none"


@pytest.mark.parametrize("num_samples,batch_size,expected", [
    (50, 100, 17), (5000, 100, 20), (1, 100, 1), (7, 1000, 2), (3, 5000, 1), (40, 100, 20)])
def test_default_chunks_split_k_evenly_within_the_decode_budget(num_samples, batch_size,
                                                                 expected):
    chunk = likelihood.default_chunk_size(num_samples, batch_size)
    assert chunk == expected
    assert chunk * batch_size <= max(likelihood.DECODES_PER_CALL, batch_size)
    chunks = -(-num_samples // chunk)
    assert chunks * chunk - num_samples < chunks  # less than one masked sample per chunk


def test_every_number_is_the_same_whatever_the_batch_size():
    """Each image's draws are keyed by its index in the split, not by its place in a batch
    (the evaluation guide's promise): 13 images in one batch, in batches of 5 (the last one
    padded) and with the K samples in chunks, give the same ELBO and IWAE numbers. The
    shipped course model, whose reconstructions depend on z (an untrained one's hardly do)."""
    model, variables, _ = pretrained.load("course")
    images = np.random.default_rng(4).uniform(size=(13, 28, 28, 1)).astype(np.float32)
    options = dict(seed=3, iwae_samples=4, binarize_mode="dynamic")
    whole = likelihood.evaluate_model(model, variables, images, batch_size=13, **options)
    batched = likelihood.evaluate_model(model, variables, images, batch_size=5, chunk_size=2,
                                        **options)
    for key in ("neg_elbo", "neg_elbo_stderr", "nll_iwae", "nll_iwae_stderr", "reconstruction",
                "kl", "kl_per_dim"):
        np.testing.assert_allclose(batched[key], whole[key], rtol=1e-5, atol=1e-5, err_msg=key)
    other_seed = likelihood.evaluate_model(model, variables, images, batch_size=13,
                                           **{**options, "seed": 4})
    assert abs(other_seed["neg_elbo"] - whole["neg_elbo"]) > 0.1  # the draws matter
