"""The NNX VAE (vae_jax.nnx): the linen model's numbers, weights and training step."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

import vae_jax
from tests import test_torch_port as parity
from tests.helpers import CONV_TOLERANCE, MODEL_CONFIG, untrained_variables
from vae_jax import nnx as vae_nnx
from vae_jax.commands import evaluate as evaluate_command
from vae_jax.interop.torch_port import from_torch_state_dict
from vae_jax.model import losses
from vae_jax.training import nnx_steps, steps, train_state

PARITY = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def linen_state():
    """A linen train state after one step (so BatchNorm's statistics are not their initial
    values), and the batch."""
    model = vae_jax.VAE()
    state = train_state.create_train_state(model, train_state.make_optimizer(2e-3),
                                           jax.random.key(0), jax.random.key(1))
    images = jax.random.uniform(jax.random.key(2), (32, 28, 28, 1))
    state, _ = jax.jit(steps.train_step)(state, images)
    return state, images


def copy_key(key):
    return jax.random.wrap_key_data(jnp.array(jax.random.key_data(key)))


def test_from_linen_and_to_linen_round_trip_exactly(linen_state):
    variables = jax.device_get(linen_state[0].variables)
    model = vae_nnx.from_linen(variables)
    chex.assert_trees_all_equal(vae_nnx.to_linen(model), variables)
    again = vae_nnx.from_linen(vae_nnx.to_linen(model))
    chex.assert_trees_all_equal(nnx.state(again), nnx.state(model))


def test_a_new_nnx_model_has_the_linen_variables_shapes():
    shapes = lambda tree: jax.tree.map(lambda leaf: tuple(np.shape(leaf)), tree)  # noqa: E731
    for z_dim in (16, 32):
        model = vae_nnx.VAE(z_dim=z_dim, rngs=nnx.Rngs(0))
        assert shapes(vae_nnx.to_linen(model)) == shapes(
            vae_jax.model.vae.variable_shapes(vae_jax.VAE(z_dim=z_dim)))
    count = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == 715_537


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_encode_decode_and_loss_match_linen(linen_state, train):
    state, images = linen_state
    model = vae_nnx.from_linen(jax.device_get(state.variables))
    model.train() if train else model.eval()
    key = jax.random.key(3)
    if train:
        (logits, mean, stddev), _ = vae_jax.VAE().apply(
            state.variables, images, key, train=True, mutable=["batch_stats"])
    else:
        logits, mean, stddev = vae_jax.VAE().apply(state.variables, images, key, train=False)
    ours = model(images, key)
    chex.assert_trees_all_close(ours, (logits, mean, stddev), **PARITY)
    chex.assert_trees_all_close(losses.vae_loss(*ours[:1], images, *ours[1:]),
                                losses.vae_loss(logits, images, mean, stddev), **PARITY)
    chex.assert_trees_all_close(model.encode(images), (mean, stddev), **PARITY)


def test_eval_mode_leaves_the_statistics_and_train_mode_moves_them(linen_state):
    state, images = linen_state
    model = vae_nnx.from_linen(jax.device_get(state.variables))
    statistics = lambda: jax.tree.map(np.array, nnx.state(model, nnx.BatchStat).to_pure_dict())  # noqa: E731
    before = statistics()
    model.eval()
    model(images, jax.random.key(0))
    chex.assert_trees_all_equal(statistics(), before)
    model.train()
    model(images, jax.random.key(0))
    assert not np.allclose(model.decoder.bn2.var.value, before["decoder"]["bn2"]["var"])


def test_imported_pytorch_weights_give_pytorch_numbers():
    """The PyTorch golden (tests/test_torch_port.py) through from_linen, in eval mode."""
    with np.load(parity.GOLDEN) as data:
        golden = dict(data)
    variables = from_torch_state_dict(parity._section(golden, "state_dict/"))
    model = vae_nnx.from_linen(variables)
    model.eval()
    images, eps = jnp.asarray(golden["images"]), jnp.asarray(golden["eps"])
    mean, stddev = model.encode(images)
    logits = model.decode(mean + stddev * eps)
    chex.assert_trees_all_close(
        {"mean": mean, "stddev": stddev, "recon": jax.nn.sigmoid(logits)},
        {name: golden[f"eval/{name}"] for name in ("mean", "stddev", "recon")},
        atol=parity.OUTPUT_ATOL, rtol=0)
    chex.assert_trees_all_close(losses.vae_loss(logits, images, mean, stddev)[0],
                                golden["eval/loss"], rtol=parity.LOSS_RTOL, atol=0)


def test_the_nnx_step_is_the_linen_step(linen_state):
    """From the same weights, batch and key, four NNX steps take the linen trainer's steps:
    parameters, BatchNorm statistics, Adam's state, metrics and the key carried on."""
    state, images = linen_state
    model = vae_nnx.from_linen(jax.device_get(state.variables))
    optimizer = vae_nnx.make_optimizer(model)
    linen = train_state.create_train_state(vae_jax.VAE(), train_state.make_optimizer(2e-3),
                                           jax.random.key(0), copy_key(state.key))
    linen = linen.replace(params=state.params, batch_stats=state.batch_stats)
    key = copy_key(state.key)
    step = jax.jit(steps.train_step)
    for _ in range(4):
        linen, linen_metrics = step(linen, images)
        metrics, key = vae_nnx.train_step(model, optimizer, images, key)
        chex.assert_trees_all_close(metrics, linen_metrics, **PARITY)
    chex.assert_trees_all_close(vae_nnx.to_linen(model), linen.variables, **PARITY)
    adam, linen_adam = optimizer.opt_state[0], linen.opt_state[0]
    chex.assert_trees_all_close(
        (adam.mu.to_pure_dict(), adam.nu.to_pure_dict(), getattr(adam.count, "value", adam.count)),
        (linen_adam.mu, linen_adam.nu, linen_adam.count), **PARITY)
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(linen.key))


def test_the_nnx_step_compiles_once(linen_state):
    """Steps on batches of one shape reuse one compilation (`chex.assert_max_traces`)."""
    state, images = linen_state
    model = vae_nnx.from_linen(jax.device_get(state.variables))
    optimizer = vae_nnx.make_optimizer(model)
    step = nnx.jit(chex.assert_max_traces(nnx_steps.take_step, n=1),
                   static_argnames="kl_weight")
    key = jax.random.key(0)
    for _ in range(3):
        _, key = step(model, optimizer, images, key)


@pytest.mark.parametrize("implementation", ["xla", "matmul", "winograd"])
def test_every_convolution_implementation_gives_the_same_numbers(linen_state, implementation):
    state, images = linen_state
    variables = jax.device_get(state.variables)
    reference = vae_nnx.from_linen(variables, implementation="xla")
    model = vae_nnx.from_linen(variables, implementation=implementation)
    assert model.decoder.deconv2.implementation == implementation
    chex.assert_trees_all_close(model(images, jax.random.key(4)),
                                reference(images, jax.random.key(4)), **CONV_TOLERANCE)


def test_from_linen_refuses_variables_of_another_shape():
    variables = untrained_variables()
    variables["params"]["decoder"]["deconv2"]["kernel"] = np.zeros((3, 3, 256, 128))
    expected = (r"params/decoder/deconv2/kernel has shape \(3, 3, 256, 128\), "
                r"the NNX VAE's is \(4, 4, 256, 128\)")
    with pytest.raises(ValueError, match=expected):
        vae_nnx.from_linen(variables)
    del variables["batch_stats"]["encoder"]["bn2"]
    with pytest.raises(ValueError, match="the variables have no encoder/bn2/mean"):
        vae_nnx.from_linen(untrained_variables() | {"batch_stats": variables["batch_stats"]})


@pytest.mark.parametrize("variables, missing", [
    ({"params": {}}, "batch_stats"), ({"batch_stats": {}}, "params"),
    ({}, "params or batch_stats"), (None, "params or batch_stats"),
])
def test_from_linen_without_params_or_batch_stats_names_what_is_missing(variables, missing):
    with pytest.raises(ValueError, match=f"the variables have no {missing}: give the linen "):
        vae_nnx.from_linen(variables)


def test_a_step_refuses_a_model_in_eval_mode_and_an_empty_batch(linen_state):
    state, _ = linen_state
    model = vae_nnx.from_linen({"params": state.params, "batch_stats": state.batch_stats})
    optimizer = vae_nnx.make_optimizer(model)
    images = jnp.full((2, 28, 28, 1), 0.5)
    before = nnx.state(model)
    model.eval()
    with pytest.raises(ValueError, match="the model is in evaluation mode: .* call model.train()"):
        vae_nnx.train_step(model, optimizer, images, jax.random.key(0))
    model.train()
    with pytest.raises(ValueError, match=r"with B >= 1, got shape \(0, 28, 28, 1\)"):
        vae_nnx.train_step(model, optimizer, images[:0], jax.random.key(0))
    chex.assert_trees_all_equal(nnx.state(model), before)  # nothing was trained
    assert int(optimizer.step.value) == 0
    vae_nnx.train_step(model, optimizer, images, jax.random.key(0))  # in train mode it trains
    assert int(optimizer.step.value) == 1


@pytest.mark.parametrize("learning_rate", [-1.0, 0.0, float("nan"), float("inf")])
def test_a_learning_rate_that_cannot_train_is_refused(learning_rate):
    model = vae_nnx.VAE(rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="the learning rate must be a positive finite number"):
        vae_nnx.make_optimizer(model, learning_rate)
    with pytest.raises(ValueError, match="the learning rate must be a positive finite number"):
        train_state.make_optimizer(learning_rate)
    train_state.make_optimizer(lambda step: -1.0)  # a schedule is the caller's


def test_a_checkpoint_loads_into_nnx_and_an_nnx_model_saves_for_evaluate(tmp_path, capsys):
    """save_variables(to_linen(model)) is a directory that load_model and vae-jax-evaluate
    read; load_variables of it gives the NNX model back."""
    model = vae_nnx.VAE(rngs=nnx.Rngs(7))
    workdir = tmp_path / "nnx"
    vae_jax.save_variables(str(workdir), vae_nnx.to_linen(model), MODEL_CONFIG)
    linen_model, variables, _ = vae_jax.load_model(str(workdir))
    model.eval()
    images = jax.random.uniform(jax.random.key(5), (8, 28, 28, 1))
    chex.assert_trees_all_close(model(images, jax.random.key(6)),
                                linen_model.apply(variables, images, jax.random.key(6),
                                                  train=False), **PARITY)
    chex.assert_trees_all_equal(nnx.state(vae_nnx.from_linen(variables), nnx.Param),
                                nnx.state(model, nnx.Param))
    with tfds.testing.mock_data(num_examples=6):
        status = evaluate_command.main(["--workdir", str(workdir), "--iwae-samples", "2",
                                        "--json", "--data-dir", str(tmp_path / "data"),
                                        "--no-progress"])
    assert status == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["neg_elbo"])
