"""The train state, the train step, the epoch loops, the test-split ELBO and determinism."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import assert_states_close
from vae_jax import VAE
from vae_jax.data import input_pipeline
from vae_jax.evaluation import elbo
from vae_jax.model import losses
from vae_jax.training import loop, schedules, steps, train_state
from vae_jax.training.config import TrainConfig


def state_factory(optimizer, seed=0, model=VAE()):
    """A function returning a new train state (the jitted steps donate their input)."""
    keys = train_state.RunKeys.from_seed(seed)
    state = train_state.create_train_state(model, optimizer, keys.init, keys.train)
    return lambda: jax.tree.map(jnp.copy, state)


@pytest.fixture(scope="module")
def fresh_state():
    """With the course's Adam."""
    return state_factory(train_state.make_optimizer(2e-3))


@pytest.fixture(scope="module")
def sgd_state():
    """With plain SGD, for comparing two computations of the same training: Adam divides
    by the gradient's magnitude and so turns the rounding noise in the zero gradients of
    the biases before BatchNorm (see below) into steps as large as the learning rate."""
    return state_factory(optax.sgd(1e-5))


@pytest.fixture(scope="module")
def step_fn():
    return steps.make_train_step(max_traces=2)


@pytest.fixture(scope="module")
def epoch_images():
    """20 images: two full batches of 8 and a last one of 4."""
    return np.random.default_rng(1).uniform(size=(20, 28, 28, 1)).astype(np.float32)


def test_default_config_is_the_course_recipe():
    config = TrainConfig()
    assert (config.epochs, config.batch_size, config.learning_rate, config.z_dim) == (
        10, 1024, 2e-3, 32)


def test_run_keys_are_distinct():
    keys = train_state.RunKeys.from_seed(0)
    data = [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in vars(keys).values()]
    assert len(set(data)) == len(data)


@pytest.mark.slow(reason="runs the step op by op, without jit")
class TrainStepTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_train_step_agrees_with_and_without_jit(self):
        # The XLA convolutions: fewer operations to dispatch one by one without jit.
        state = state_factory(train_state.make_optimizer(2e-3), model=VAE(implementation="xla"))()
        images = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype(np.float32)
        new_state, metrics = self.variant(steps.train_step)(state, images)
        expected_state, expected_metrics = jax.jit(steps.train_step)(state, images)
        assert_states_close(new_state, expected_state, rtol=1e-4, atol=1e-5)
        chex.assert_trees_all_close(metrics, expected_metrics, rtol=1e-5)
        chex.assert_tree_all_finite(metrics)
        assert int(new_state.step) == 1


def test_step_splits_the_key_and_never_reuses_it(fresh_state, step_fn, images):
    state = fresh_state()
    seen = {tuple(np.asarray(jax.random.key_data(state.key)))}
    for _ in range(3):
        state, _ = step_fn(state, images)
        seen.add(tuple(np.asarray(jax.random.key_data(state.key))))
    assert len(seen) == 4


def test_loss_falls_when_overfitting_a_small_batch(fresh_state, step_fn, images):
    state = fresh_state()
    losses = []
    for _ in range(30):
        state, metrics = step_fn(state, images)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.8 * losses[0], losses
    chex.assert_tree_all_finite(state.params)


def test_batch_stats_change_in_train_mode_and_not_in_eval_mode(fresh_state, step_fn, images):
    state = fresh_state()
    before = jax.tree.map(np.asarray, state.batch_stats)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    _, updates = state.apply_fn(variables, images, jax.random.key(0), train=False,
                                mutable=["batch_stats"])
    chex.assert_trees_all_equal(updates["batch_stats"], before)
    state, _ = step_fn(state, images)
    for (path, old), new in zip(jax.tree.leaves_with_path(before),
                                jax.tree.leaves(state.batch_stats)):
        assert not np.allclose(old, new), path


def test_eval_mode_uses_running_averages(fresh_state, images):
    """In eval mode each image's encoding does not depend on the rest of the batch."""
    state = fresh_state()
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def encode(x, train):
        return state.apply_fn(variables, x, train=train, method=VAE.encode,
                              mutable=["batch_stats"])[0]

    chex.assert_trees_all_close(encode(images[:2], False),
                                jax.tree.map(lambda a: a[:2], encode(images, False)),
                                rtol=1e-5, atol=1e-6)
    # In train mode the batch statistics couple the images.
    assert not np.allclose(encode(images[:2], True)[0], encode(images, True)[0][:2])


def test_train_step_compiles_at_most_twice_per_run(fresh_state, images):
    step = steps.make_train_step(max_traces=2)
    state = fresh_state()
    state, _ = step(state, images)          # full batch
    state, _ = step(state, images[:3])      # the last, smaller batch
    state, _ = step(state, images)          # cached: no new trace
    with pytest.raises(AssertionError, match="trace"):
        step(state, images[:5])             # a third shape would be a recompilation


def test_epoch_covers_every_image_with_the_seeded_order(epoch_images):
    key = jax.random.key(5)
    order = np.asarray(input_pipeline.epoch_permutation(key, 20))
    np.testing.assert_array_equal(np.sort(order), np.arange(20))
    np.testing.assert_array_equal(
        order, np.asarray(input_pipeline.epoch_permutation(key, 20)))
    slices = input_pipeline.batch_slices(20, 8)
    assert [s.stop - s.start for s in slices] == [8, 8, 4]


@pytest.fixture(scope="module")
def two_step_epochs(sgd_state, epoch_images):
    """Two epochs with the step-by-step loop: (states after each epoch, summed metrics)."""
    step = steps.make_train_step(max_traces=2)
    state = sgd_state()
    results = []
    for epoch in (1, 2):
        state, sums = loop.run_epoch_steps(step, state, epoch_images,
                                           jax.random.fold_in(jax.random.key(7), epoch), 8)
        results.append((jax.tree.map(jnp.copy, state), sums))
    return results


def test_scan_epoch_equals_the_step_loop(sgd_state, epoch_images, two_step_epochs):
    """The scan epoch (what `auto` runs on a GPU or TPU) against the step loop: in the fast
    tier, so that every machine runs it (about 5 s here)."""
    epoch_fn = steps.make_train_epoch(batch_size=8, max_traces=1)
    state = sgd_state()
    device_images = jax.device_put(epoch_images)
    for epoch, (expected_state, expected_sums) in zip((1, 2), two_step_epochs):
        state, sums = epoch_fn(state, device_images, jax.random.fold_in(jax.random.key(7), epoch))
        assert_states_close(state, expected_state, rtol=2e-4, atol=2e-5)
        chex.assert_trees_all_close(sums, expected_sums, rtol=1e-4)
    assert int(state.step) == 6
    moved = np.abs(state.params["decoder"]["deconv2"]["kernel"]
                   - sgd_state().params["decoder"]["deconv2"]["kernel"]).max()
    # Ten times the comparison's tolerance: the equality above is not just "nothing moved".
    assert moved > 10 * 2e-5, "training must move the weights for this comparison to mean much"


def test_same_seed_same_result_different_seed_differs(sgd_state, epoch_images,
                                                      two_step_epochs):
    """Both runs trained alike from RunKeys.from_seed: seed 0 again gives the same state
    bit for bit, seed 1 another (its initial weights and its noise both differ)."""
    # Two batch shapes, for each of two optimizer objects (a state's optimizer is static).
    step = steps.make_train_step(max_traces=4)

    def two_epochs(state):
        for epoch in (1, 2):
            state, _ = loop.run_epoch_steps(step, state, epoch_images,
                                            jax.random.fold_in(jax.random.key(7), epoch), 8)
        return state

    again = two_epochs(sgd_state())
    chex.assert_trees_all_equal(again.params, two_step_epochs[1][0].params)
    chex.assert_trees_all_equal(again.batch_stats, two_step_epochs[1][0].batch_stats)
    other = two_epochs(state_factory(optax.sgd(1e-5), seed=1)())
    ours = jax.tree.leaves((again.params, again.batch_stats, jax.random.key_data(again.key)))
    theirs = jax.tree.leaves((other.params, other.batch_stats, jax.random.key_data(other.key)))
    assert not any(np.array_equal(a, b) for a, b in zip(ours, theirs))  # every array differs
    zero, one = train_state.RunKeys.from_seed(0), train_state.RunKeys.from_seed(1)
    for field in dataclasses.fields(zero):
        assert not np.array_equal(jax.random.key_data(getattr(zero, field.name)),
                                  jax.random.key_data(getattr(one, field.name))), field.name
        assert np.array_equal(jax.random.key_data(getattr(zero, field.name)), jax.random.key_data(
            getattr(train_state.RunKeys.from_seed(0), field.name))), field.name


def test_test_loss_averages_per_image(fresh_state, images):
    state = fresh_state()
    model = VAE()
    whole = elbo.neg_elbo(model, state.variables, images, jax.random.key(0),
                          batch_size=8).averages()
    assert set(whole) == {"loss", "reconstruction", "kl"}
    np.testing.assert_allclose(whole["loss"], whole["reconstruction"] + whole["kl"], rtol=1e-5)
    # Eval mode: batching does not change the per-image KL (which uses no sample).
    split = elbo.neg_elbo(model, state.variables, images, jax.random.key(0),
                          batch_size=5).averages()
    np.testing.assert_allclose(split["kl"], whole["kl"], rtol=1e-5)


@pytest.mark.slow(reason="compiles the training step with dynamic binarization")
def test_dynamic_binarization_trains_on_binary_draws(fresh_state, images):
    state = fresh_state()
    step = jax.jit(steps.train_step, static_argnums=2)
    _, gray = step(state, images, False)
    _, binary = step(state, images, True)
    _, binary_again = step(state, images, True)
    chex.assert_trees_all_equal(binary, binary_again)     # the draw comes from the state's key
    assert abs(float(binary["loss"]) - float(gray["loss"])) > 1.0


def test_dynamic_binarization_keeps_binary_images(fresh_state):
    """Bernoulli(0 or 1) is the image itself: the eval-mode KL (no sample) is unchanged."""
    state = fresh_state()
    binary_images = (np.random.default_rng(2).uniform(size=(4, 28, 28, 1)) > 0.5).astype(
        np.float32)
    gray_images = binary_images * 0.5 + 0.25

    def kl(images, binarize_mode):
        return elbo.neg_elbo(VAE(), state.variables, images, jax.random.key(0),
                             batch_size=4, binarize_mode=binarize_mode).kl

    chex.assert_trees_all_close(kl(binary_images, "dynamic"), kl(binary_images, "none"),
                                rtol=1e-6)
    assert not np.allclose(kl(gray_images, "dynamic"), kl(gray_images, "none"), rtol=1e-3)


@pytest.mark.slow(reason="compiles three variants of the step")
def test_beta_one_is_the_course_and_beta_zero_trains_on_the_reconstruction_alone(
        sgd_state, images):
    state = sgd_state()
    course = jax.jit(steps.train_step)(state, images)
    chex.assert_trees_all_equal(course, jax.jit(steps.train_step, static_argnums=(2, 3))(
        state, images, False, schedules.kl_weight_schedule(1.0)))

    autoencoder, metrics = jax.jit(steps.train_step, static_argnums=(2, 3))(
        state, images, False, schedules.kl_weight_schedule(0.0))
    _, sample_key = jax.random.split(state.key)

    def reconstruction_only(params):  # the same step, written out without the KL term
        (logits, _, _), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, images, sample_key,
            train=True, mutable=["batch_stats"])
        return losses.reconstruction_loss(logits, images).sum(), updates["batch_stats"]

    grads, batch_stats = jax.grad(reconstruction_only, has_aux=True)(state.params)
    expected = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    chex.assert_trees_all_close(autoencoder.params, expected.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_equal(metrics, course[1])  # the reported ELBO stays the true one


def test_a_kl_warm_up_counts_epochs_in_steps():
    config = TrainConfig(batch_size=16, kl_weight=2.0, kl_warmup_epochs=2)
    schedule = config.kl_weight_schedule(steps_per_epoch=3)
    np.testing.assert_allclose([schedule(step) for step in (0, 3, 6, 9)], [0.0, 1.0, 2.0, 2.0])
    assert [TrainConfig().kl_weight_schedule(3)(step) for step in (0, 9)] == [1.0, 1.0]


@pytest.mark.slow(reason="compiles the step loop and the scan epoch with a warm-up")
def test_the_scan_epoch_warms_the_kl_weight_up_like_the_step_loop(sgd_state, epoch_images):
    warm_up = schedules.kl_weight_schedule(weight=2.0, warmup_steps=4)
    key = jax.random.key(7)
    step = steps.make_train_step(max_traces=2, kl_weight=warm_up)
    stepped, stepped_sums = loop.run_epoch_steps(step, sgd_state(), epoch_images, key, 8)
    epoch_fn = steps.make_train_epoch(batch_size=8, max_traces=1, kl_weight=warm_up)
    scanned, scanned_sums = epoch_fn(sgd_state(), jax.device_put(epoch_images), key)
    assert_states_close(scanned, stepped, rtol=2e-4, atol=2e-5)
    chex.assert_trees_all_close(scanned_sums, stepped_sums, rtol=1e-4)
    # ... and the warm-up is not a no-op: β = 2 from the first step trains differently.
    beta_two = steps.make_train_step(kl_weight=schedules.kl_weight_schedule(2.0))
    constant, _ = loop.run_epoch_steps(beta_two, sgd_state(), epoch_images, key, 8)
    assert not np.allclose(constant.params["encoder"]["conv3"]["kernel"],
                           stepped.params["encoder"]["conv3"]["kernel"], atol=1e-5)
