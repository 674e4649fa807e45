"""Evaluation in nats: the IWAE bound against known likelihoods, chunking, active units,
dynamic binarization, and the `python -m vae_jax.evaluate` command line."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import vae_jax
from tests.evaluation_helpers import save_untrained, untrained_variables
from vae_jax import evaluate, losses
from vae_jax.binarize import binarize

B, Z = 6, 3
NUM_MOCK = 12


@pytest.fixture(scope="module")
def vae_variables():
    """Variables of an untrained VAE (z_dim 32)."""
    return untrained_variables()


@pytest.fixture(scope="module")
def toy():
    """Small images, fixed decoder logits that ignore z, and a posterior q(z|x)."""
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(B, 4, 4, 1)).astype(np.float32)
    logits = rng.normal(size=(B, 4, 4, 1)).astype(np.float32)
    mean = rng.normal(scale=0.7, size=(B, Z)).astype(np.float32)
    stddev = rng.uniform(0.5, 1.5, size=(B, Z)).astype(np.float32)
    return images, logits, mean, stddev


# Jitted once per decoder (a static argument), as the command line does.
iwae = jax.jit(evaluate.iwae_log_likelihood, static_argnums=(4, 5, 6),
               static_argnames=("log_likelihood_fn",))


def iwae_over_seeds(num_seeds, images, mean, stddev, decode, num_samples, chunk=None,
                    **kwargs):
    """IWAE estimates with keys 0 .. num_seeds - 1 at once: (num_seeds, B)."""
    keys = jax.vmap(jax.random.key)(jnp.arange(num_seeds))
    run = jax.vmap(lambda key: evaluate.iwae_log_likelihood(
        key, images, mean, stddev, decode, num_samples, chunk, **kwargs))
    return np.asarray(jax.jit(run)(keys))


def constant_decoder(logits):
    """A decoder that ignores z: sample k of image b gets image b's logits."""
    def decode(z):
        return jnp.tile(jnp.asarray(logits), (z.shape[0] // logits.shape[0], 1, 1, 1))
    return decode


def true_log_likelihood(images, logits):
    return -losses.reconstruction_loss(jnp.asarray(logits), jnp.asarray(images))


# --- pure math -------------------------------------------------------------------------------

def test_iwae_bound_is_log_mean_exp():
    log_weights = jnp.array([[-100.0, -3.0], [-101.0, -3.0], [-102.0, -3.0]])
    expected = [math.log(np.mean(np.exp([0.0, -1.0, -2.0]))) - 100.0, -3.0]
    np.testing.assert_allclose(evaluate.iwae_bound(log_weights), expected, rtol=1e-6)
    np.testing.assert_allclose(evaluate.iwae_bound(log_weights[:1]), log_weights[0])


def test_iwae_equals_exact_likelihood_when_q_is_the_prior(toy):
    """z-independent decoder and q = p(z): every weight is p(x), for any K and chunking."""
    images, logits, mean, _ = toy
    zeros, ones = np.zeros_like(mean), np.ones_like(mean)
    truth = true_log_likelihood(images, logits)
    decode = constant_decoder(logits)
    for num_samples, chunk in ((1, None), (5, 2)):
        estimate = iwae(jax.random.key(0), images, zeros, ones, decode, num_samples, chunk)
        np.testing.assert_allclose(estimate, truth, rtol=1e-6)


def test_iwae_converges_to_exact_likelihood_with_a_mismatched_q(toy):
    """z-independent decoder, q != p(z): log p(x) = -BCE exactly; the IWAE estimate is a
    lower bound in expectation that converges to it as K grows."""
    images, logits, mean, stddev = toy
    truth = np.asarray(true_log_likelihood(images, logits))
    decode = constant_decoder(logits)
    gaps = {}
    for num_samples, seeds in ((1, 2000), (10, 500), (2000, 20)):
        estimates = iwae_over_seeds(seeds, images, mean, stddev, decode, num_samples, 500)
        gaps[num_samples] = float(np.mean(truth - estimates))
    # For this decoder the gap of K = 1 is E_q[log q(z|x) - log p(z)] = KL(q || p(z)) exactly.
    kl = float(np.mean(evaluate.kl_per_dimension(mean, stddev).sum(-1)))
    assert gaps[1] == pytest.approx(kl, rel=0.05)
    assert gaps[1] > gaps[10] > gaps[2000] >= -0.01
    assert gaps[2000] < 0.03 * gaps[1]


def test_iwae_is_exact_on_a_gaussian_toy_with_the_true_posterior():
    """z ~ N(0, I), x|z ~ N(z, s^2 I): log p(x) = log N(x; 0, (1 + s^2) I). With the true
    posterior as q every weight equals p(x); with a wider q the bound is below and tightens."""
    s = 0.5
    x = jnp.asarray(np.random.default_rng(1).normal(scale=math.sqrt(1 + s * s), size=(4, 2)),
                    jnp.float32)
    truth = evaluate.gaussian_log_density(x, 0.0, math.sqrt(1 + s * s))
    decode = lambda z: z  # noqa: E731
    likelihood = lambda mean, x: evaluate.gaussian_log_density(x, mean, s)  # noqa: E731
    posterior_mean = x / (1 + s * s)
    posterior_std = jnp.full_like(x, s / math.sqrt(1 + s * s))
    exact = iwae(jax.random.key(3), x, posterior_mean, posterior_std, decode, 7, 3,
                 log_likelihood_fn=likelihood)
    np.testing.assert_allclose(exact, truth, rtol=1e-5)
    wide = jnp.full_like(x, 1.0)
    one = iwae_over_seeds(500, x, posterior_mean, wide, decode, 1, log_likelihood_fn=likelihood)
    many = iwae_over_seeds(4, x, posterior_mean, wide, decode, 4000, 1000,
                           log_likelihood_fn=likelihood)
    assert abs(float(np.mean(truth - many))) < 0.01
    assert float(np.mean(truth - one)) > 0.1


def test_chunking_gives_the_same_result(toy):
    """Chunks of 1, 3 (a masked partial last chunk) and all 10 samples agree, and equal the
    log-mean-exp of the unchunked log-weights, with a decoder that depends on z."""
    images, logits, mean, stddev = toy

    def decode(z):
        return constant_decoder(logits)(z) + z[:, :1, None, None]

    key = jax.random.key(7)
    full = iwae(key, images, mean, stddev, decode, 10, None)
    for chunk in (1, 3):
        np.testing.assert_allclose(iwae(key, images, mean, stddev, decode, 10, chunk), full,
                                   rtol=1e-6)
    log_weights = jax.jit(evaluate.importance_log_weights, static_argnums=(4, 5))(
        key, images, mean, stddev, decode, 10)
    np.testing.assert_allclose(evaluate.iwae_bound(log_weights), full, rtol=1e-6)


def test_iwae_at_least_the_mean_log_weight_and_k1_is_one_weight(images, vae_variables):
    """For the same samples, log-mean-exp >= mean (Jensen): NLL_iwae <= the average
    single-sample negative ELBO estimate, with the real VAE decoder. K = 1 is one weight."""
    model = vae_jax.VAE()

    @jax.jit
    def compute(variables, images, key):
        mean, stddev = model.apply(variables, images, train=False, method=vae_jax.VAE.encode)
        decode = evaluate.decoder_fn(model, variables)
        z = evaluate.sample_latents(key, mean, stddev, jnp.zeros((1,), jnp.int32))[0]
        return {
            "log_weights": evaluate.importance_log_weights(key, images, mean, stddev, decode, 8),
            "bound": evaluate.iwae_log_likelihood(key, images, mean, stddev, decode, 8, 3),
            "bound_k1": evaluate.iwae_log_likelihood(key, images, mean, stddev, decode, 1),
            "terms": evaluate.neg_elbo_terms(key, images, mean, stddev, decode),
            "log_q_minus_log_p": evaluate.gaussian_log_density(z, mean, stddev)
            - evaluate.gaussian_log_density(z, 0.0, 1.0)}

    out = jax.device_get(compute(vae_variables, jnp.asarray(images), jax.random.key(11)))
    log_weights = out["log_weights"]
    assert np.all(-out["bound"] <= -log_weights.mean(0) + 1e-4)
    assert np.all(-out["bound"] < -log_weights.mean(0))  # strictly: the weights differ
    np.testing.assert_allclose(out["bound_k1"], log_weights[0], rtol=1e-6)
    # The single weight is the ELBO's integrand at the ELBO's sample: its expectation over z
    # is minus the negative ELBO (log q - log p averages to the closed-form KL).
    np.testing.assert_allclose(-log_weights[0], out["terms"]["reconstruction"]
                               + out["log_q_minus_log_p"], rtol=1e-5)


def test_kl_per_dimension_sums_to_the_loss_kl_and_vanishes_at_the_prior(toy):
    _, _, mean, stddev = toy
    per_dim = evaluate.kl_per_dimension(mean, stddev)
    assert per_dim.shape == (B, Z) and np.all(np.asarray(per_dim) >= 0)
    np.testing.assert_allclose(per_dim.sum(-1), losses.kl_divergence(mean, stddev), rtol=1e-6)
    np.testing.assert_allclose(evaluate.kl_per_dimension(np.zeros(3), np.ones(3)), 0.0)
    np.testing.assert_allclose(evaluate.kl_per_dimension(np.array([2.0]), np.array([1.0])), 2.0)


def test_active_units_counts_dimensions_whose_mean_varies():
    rng = np.random.default_rng(0)
    means = np.stack([rng.normal(scale=1.0, size=1000),     # active
                      rng.normal(scale=0.2, size=1000),     # variance 0.04: active
                      rng.normal(scale=0.05, size=1000),    # variance 0.0025: inactive
                      np.full(1000, 3.0)], axis=1)          # constant: inactive
    np.testing.assert_allclose(evaluate.latent_activity(means)[:2], [1.0, 0.04], rtol=0.1)
    assert evaluate.active_units(means) == 2
    assert evaluate.active_units(means, threshold=0.001) == 3


def test_mean_and_stderr():
    mean, stderr = evaluate.mean_and_stderr(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and stderr == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)


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
        status = evaluate.main(list(args))
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
        evaluate.main(["--workdir", str(saved_model), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_missing_workdir_and_variables_exit_2_in_one_line(tmp_path, capsys):
    assert evaluate.main(["--workdir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "not a directory" in err[0]
    assert evaluate.main(["--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no saved variables" in err[0]


def test_variables_that_do_not_fit_the_config_exit_2(saved_model, tmp_path, capsys):
    import shutil
    workdir = tmp_path / "mismatch"
    shutil.copytree(saved_model, workdir)
    (workdir / "config.json").write_text(json.dumps({"z_dim": 8, "im_chan": 1}))
    assert evaluate.main(["--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not fit a VAE with z_dim=8" in err[0]


def test_binarize_defaults_to_what_the_run_trained_with(tmp_path, capsys):
    from vae_jax import checkpoints
    run = checkpoints.RunCheckpoints(str(tmp_path))
    try:
        run.save(1, untrained_variables(), {"step": np.zeros((), np.int32)},
                 {"z_dim": 32, "binarize": "dynamic"})
    finally:
        run.close()
    checkpoints.save_config(str(tmp_path), {"z_dim": 32, "im_chan": 1})
    assert evaluate.training_binarize(str(tmp_path)) == "dynamic"
    common = ["--workdir", str(tmp_path), "--iwae-samples", "4", "--json", "--batch-size", "5",
              "--data-dir", str(tmp_path / "data"), "--no-progress"]
    status, out, err = run_main(capsys, *common)
    assert status == 0, err
    assert json.loads(out)["binarize"] == "dynamic"
    status, out, _ = run_main(capsys, *common, "--binarize", "none")
    assert json.loads(out)["binarize"] == "none"
