"""The IWAE and DReG training objectives (vae_jax.model.objectives, the training step):
K = 1 is the ELBO's sample, the IWAE loss against a direct computation, DReG's encoder
gradient against its definition, and the usual checks (finite, compiled once, the ELBO
step untouched)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import without_pre_batchnorm_biases
from vae_jax import VAE
from vae_jax.model import iwae, losses, objectives
from vae_jax.model.objectives import Objective
from vae_jax.training import steps, train_state

BATCH = 6


@pytest.fixture(scope="module")
def make_state():
    keys = train_state.RunKeys.from_seed(3)
    state = train_state.create_train_state(VAE(), optax.sgd(1e-4), keys.init, keys.train)
    return lambda: jax.tree.map(jnp.copy, state)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(size=(BATCH, 28, 28, 1)).astype(np.float32)


# jitted: one compilation per objective, where op-by-op dispatch compiles every operation
@functools.partial(jax.jit, static_argnums=2)
def gradients(state, images, objective, key=jax.random.key(9)):
    if objective.name == "elbo":
        return steps.elbo_gradients(state, images, key, steps.COURSE_KL_WEIGHT)
    return steps.importance_weighted_gradients(state, images, key, objective)


def test_with_one_sample_the_iwae_step_draws_the_elbo_steps_z(make_state, images):
    """Same z, so the same reported metrics and BatchNorm statistics; the loss differs only
    in the KL: sampled (log q(z|x) - log p(z)) instead of closed form."""
    state = make_state()
    _, elbo_metrics, elbo_stats = gradients(state, images, objectives.ELBO)
    grads, metrics, stats = gradients(state, images, Objective("iwae", 1))
    chex.assert_trees_all_close(metrics, elbo_metrics, rtol=1e-6)
    chex.assert_trees_all_close(stats, elbo_stats, rtol=1e-6)
    chex.assert_tree_all_finite(grads)

    def sampled_kl_elbo(params):  # the ELBO with the KL estimated from the same sample
        variables = {"params": params, "batch_stats": state.batch_stats}
        (logits, mean, stddev), _ = state.apply_fn(variables, images, jax.random.key(9),
                                                   train=True, mutable=["batch_stats"])
        z = mean + stddev * jax.random.normal(jax.random.key(9), mean.shape)
        sampled_kl = (iwae.gaussian_log_density(z, mean, stddev)
                      - iwae.gaussian_log_density(z, 0.0, 1.0))
        return (losses.reconstruction_loss(logits, images) + sampled_kl).sum()

    chex.assert_trees_all_close(  # the biases before BatchNorm have only rounding noise
        without_pre_batchnorm_biases(grads),
        without_pre_batchnorm_biases(jax.jit(jax.grad(sampled_kl_elbo))(state.params)),
        rtol=2e-4, atol=2e-5)  # float32 sums in another order (gradients up to ~20)


def test_the_iwae_loss_is_minus_the_bound_computed_directly(make_state, images):
    state, num = make_state(), 4
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    (mean, stddev), _ = state.apply_fn(variables, images, train=True, method=VAE.encode,
                                       mutable=["batch_stats"])
    eps = jax.random.normal(jax.random.key(9), (num,) + mean.shape)
    z = mean[None] + stddev[None] * eps
    decode = lambda flat: state.apply_fn(  # noqa: E731 - BatchNorm over all K*B decodes
        variables, flat, train=True, method=VAE.decode, mutable=["batch_stats"])[0]
    expected = np.zeros(BATCH)
    logits = np.asarray(decode(z.reshape(-1, z.shape[-1]))).reshape((num, BATCH, 28, 28, 1))
    for b in range(BATCH):  # log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), image by image
        terms = [float(iwae.bernoulli_log_likelihood(logits[k, b][None], images[b][None])[0]
                       + iwae.gaussian_log_density(z[k, b], 0.0, 1.0)
                       - iwae.gaussian_log_density(z[k, b], mean[b], stddev[b]))
                 for k in range(num)]
        expected[b] = -(np.logaddexp.reduce(np.array(terms, np.float64)) - np.log(num))

    (mean2, stddev2, z2, logits2), _ = state.apply_fn(
        variables, images, jax.random.key(9), num, train=True, mutable=["batch_stats"],
        method=steps.sample_and_decode)
    loss = objectives.iwae_loss(objectives.log_weights(logits2, images, z2, mean2, stddev2))
    chex.assert_trees_all_close(loss, expected, rtol=1e-5)
    # -log mean_k w_k lies between -max_k log w_k and -mean_k log w_k (Jensen), exactly.
    log_weights = np.asarray(objectives.log_weights(logits2, images, z2, mean2, stddev2),
                             np.float64)
    assert np.all(loss <= -log_weights.mean(axis=0) + 1e-3)
    assert np.all(loss >= -log_weights.max(axis=0) - 1e-3)
    assert np.all(-log_weights.mean(axis=0) - loss > 0.01)  # the bounds are not all one


def toy_log_weights(params, x, eps, stop_posterior):
    """A model small enough to differentiate by hand: q(z|x) = N(a x, exp(b)^2) and
    p(x|z) = N(x; c z, 1), p(z) = N(0, 1); x (B,), eps (K, B)."""
    a, b = params["encoder"]["a"], params["encoder"]["b"]
    c = params["decoder"]["c"]
    mean, stddev = a * x, jnp.exp(b) * jnp.ones_like(x)
    z = mean[None] + stddev[None] * eps
    q_mean, q_stddev = ((jax.lax.stop_gradient(mean), jax.lax.stop_gradient(stddev))
                        if stop_posterior else (mean, stddev))
    normal = lambda v, m, s: -0.5 * ((v - m) / s) ** 2 - jnp.log(s) - 0.5 * jnp.log(  # noqa
        2 * jnp.pi)
    return normal(x[None], c * z, 1.0) + normal(z, 0.0, 1.0) - normal(z, q_mean, q_stddev)


def test_dreg_encoder_gradient_is_its_definition_and_the_decoders_is_iwaes():
    params = {"encoder": {"a": jnp.array(0.7), "b": jnp.array(-0.3)},
              "decoder": {"c": jnp.array(1.3)}}
    x = jnp.array([0.5, -1.2, 2.0])
    eps = jax.random.normal(jax.random.key(1), (5, 3))
    grads, log_w, _ = objectives.dreg_gradients(
        lambda p: (toy_log_weights(p, x, eps, True), None), params)
    weights = jax.nn.softmax(log_w, axis=0)
    a, b, c = 0.7, -0.3, 1.3
    z = a * x[None] + np.exp(b) * eps
    # d log w / d z with q's parameters held fixed: the likelihood's and the prior's terms,
    # and -(z - mean) / stddev^2 from log q (mean and stddev cut, z not)
    dlogw_dz = c * (x[None] - c * z) - z + (z - a * x[None]) / np.exp(b) ** 2
    expected_a = -np.sum(weights ** 2 * dlogw_dz * x[None])
    expected_b = -np.sum(weights ** 2 * dlogw_dz * np.exp(b) * eps)
    chex.assert_trees_all_close((grads["encoder"]["a"], grads["encoder"]["b"]),
                                (expected_a, expected_b), rtol=1e-5)
    iwae_loss = lambda p: objectives.iwae_loss(toy_log_weights(p, x, eps, False)).sum()  # noqa
    chex.assert_trees_all_close(grads["decoder"], jax.grad(iwae_loss)(params)["decoder"],
                                rtol=1e-5)
    assert not np.allclose(grads["encoder"]["a"], jax.grad(iwae_loss)(params)["encoder"]["a"])


@pytest.mark.parametrize("objective", [Objective("iwae", 3), Objective("dreg", 3)],
                         ids=["iwae", "dreg"])
def test_an_importance_weighted_step_is_finite_compiles_once_and_learns(make_state, images,
                                                                       objective):
    chex.clear_trace_counter()  # chex counts per place in the code: the other objective's
    step = steps.make_train_step(max_traces=1, objective=objective)
    state = make_state()
    before = float(gradients(state, images, objective)[1]["loss"])
    for _ in range(3):
        state, metrics = step(state, images)
    chex.assert_tree_all_finite((state.params, state.batch_stats, metrics))
    chex.assert_shape(list(metrics.values()), ())
    assert int(state.step) == 3 and float(metrics["loss"]) != before


OBJECTIVES = [objectives.ELBO, Objective("iwae", 3), Objective("dreg", 3)]


@pytest.mark.parametrize("objective", OBJECTIVES, ids=["elbo", "iwae", "dreg"])
def test_the_step_follows_its_own_objectives_gradient(make_state, images, objective):
    """The step's update is the one its objective's gradient gives, and no other objective's
    (SGD, so an update is -lr x gradient): a step that took the ELBO's gradient whatever it
    was asked, or IWAE's for DReG, goes red."""
    state = make_state()
    _, sample_key = jax.random.split(state.key)  # the part of the key the step samples with
    updates = {other.name: state.apply_gradients(
        grads=gradients(state, images, other, key=sample_key)[0]).params for other in OBJECTIVES}
    stepped, _ = steps.make_train_step(objective=objective)(make_state(), images)
    tolerance = 1e-6
    chex.assert_trees_all_close(stepped.params, updates[objective.name], atol=tolerance, rtol=0)
    for other in OBJECTIVES:
        if other.name != objective.name:
            difference = max(np.abs(a - b).max() for a, b in zip(
                jax.tree.leaves(stepped.params), jax.tree.leaves(updates[other.name])))
            assert difference > 100 * tolerance, (objective.name, other.name)


def test_the_elbo_objective_is_the_course_step(make_state, images):
    """The default step and one given Objective("elbo") are the same program's result."""
    first, _ = steps.make_train_step()(make_state(), images)
    second, _ = steps.make_train_step(objective=objectives.ELBO)(make_state(), images)
    chex.assert_trees_all_equal(first.params, second.params)


@pytest.mark.parametrize("name, samples, message", [
    ("elbo", 5, "the ELBO objective takes one sample"),
    ("iwae", 0, "objective samples must be a positive integer, got 0"),
    ("vae", 1, "objective must be one of elbo, iwae, dreg, got 'vae'"),
])
def test_a_bad_objective_is_refused_in_one_line(name, samples, message):
    with pytest.raises(ValueError, match=message):
        Objective(name, samples)


def test_train_py_with_dreg_records_the_objective_beside_the_elbo(tmp_path):
    import json

    from tests.helpers import run_in_process
    workdir = tmp_path / "run"
    assert run_in_process(workdir, "--objective", "dreg", "--objective-samples", "4",
                          "--epochs", "2", "--hidden-dim", "8") == 0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records] == [1, 2]
    for record in records:  # minus the K=4 IWAE bound is below the negative ELBO
        assert np.isfinite(record["test_objective"])
        assert record["test_objective"] < record["test_loss"]
    config = json.loads((workdir / "config.json").read_text())
    assert (config["objective"], config["objective_samples"], config["hidden_dim"]) == (
        "dreg", 4, 8)
    from vae_jax import load_model
    model, _, _ = load_model(str(workdir))
    assert model.hidden_dim == 8


@pytest.mark.parametrize("flags, message", [
    (["--objective-samples", "5"], "objective_samples 5 needs objective iwae or dreg"),
    (["--objective", "iwae", "--objective-samples", "5", "--kl-weight", "0.5"],
     "kl_weight and kl_warmup_epochs are for the elbo objective"),
    (["--objective", "vae"], "argument --objective: invalid choice: 'vae'"),
])
def test_bad_objective_flags_exit_2_in_one_line(tmp_path, capsys, flags, message):
    from vae_jax.commands import train as train_command
    try:
        code = train_command.main(["--workdir", str(tmp_path / "run"), *flags])
    except SystemExit as exit_info:  # argparse's refusals
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow(reason="trains in a process with 8 fake devices")
def test_dreg_on_eight_devices_trains_what_one_device_does(tmp_path):
    from tests.helpers import RUN_FLAGS, assert_trained_alike, run_in_process, worker
    flags = ("--objective", "dreg", "--objective-samples", "3", "--epochs", "1")
    one, eight = tmp_path / "one", tmp_path / "eight"
    assert run_in_process(one, *flags) == 0
    result = worker("train", *RUN_FLAGS, *flags, "--workdir", eight, "--data-dir",
                    f"{eight}-data", devices=8)
    assert result.returncode == 0, result.stderr[-3000:]
    assert " on cpu, 8 devices, 1 process" in result.stdout
    assert_trained_alike(eight, one)


@pytest.mark.slow(reason="compiles the step loop and the scan epoch with DReG")
def test_the_scan_epoch_trains_dreg_with_a_schedule_like_the_step_loop():
    """A GPU's epoch (one lax.scan) against the CPU's steps: DReG with K = 3 on binarized
    images, and a decaying rate (plain SGD, see tests/test_train.py's `sgd_state`)."""
    from tests.helpers import assert_states_close
    from vae_jax.training import loop
    keys = train_state.RunKeys.from_seed(3)
    start = train_state.create_train_state(
        VAE(), optax.sgd(optax.cosine_decay_schedule(1e-4, decay_steps=3)), keys.init,
        keys.train)
    images = np.random.default_rng(1).uniform(size=(20, 28, 28, 1)).astype(np.float32)
    options = dict(binarize=True, objective=Objective("dreg", 3))
    key = jax.random.key(7)
    step = steps.make_train_step(max_traces=2, **options)
    stepped, stepped_sums = loop.run_epoch_steps(step, jax.tree.map(jnp.copy, start), images,
                                                 key, 8)
    epoch_fn = steps.make_train_epoch(batch_size=8, max_traces=1, **options)
    scanned, scanned_sums = epoch_fn(jax.tree.map(jnp.copy, start), jax.device_put(images),
                                     key)
    assert_states_close(scanned, stepped, rtol=2e-4, atol=2e-5)
    chex.assert_trees_all_close(scanned_sums, stepped_sums, rtol=1e-4)
    moved = np.abs(stepped.params["decoder"]["deconv2"]["kernel"]
                   - start.params["decoder"]["deconv2"]["kernel"]).max()
    assert int(stepped.step) == 3 and moved > 10 * 2e-5
