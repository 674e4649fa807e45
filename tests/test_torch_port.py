"""Parity with the course's PyTorch VAE, through its imported weights (no torch needed).

tests/data/torch_golden.npz holds a PyTorch state dict of the course model, inputs, fixed
noise and PyTorch's results (scripts/make_torch_golden.py documents the schema; the reference
values are PyTorch's float64 computation with the float32 weights). These tests import the
weights with `vae_jax.interop.torch_port`, run vae-jax in float32 with the same noise, and compare.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import VAE
from vae_jax.checkpoints.saved_model import load_model
from vae_jax.commands.torch_port import main as torch_port_main
from vae_jax.interop.torch_port import LAYERS, from_torch_state_dict, to_torch_state_dict
from vae_jax.kernels import convolutions
from vae_jax.model.losses import vae_loss
from vae_jax.model.vae import variable_shapes
from vae_jax.training import steps, train_state
from vae_jax.training.config import TrainConfig
from vae_jax.training.schedules import COURSE_KL_WEIGHT
from vae_jax.training.train_state import TrainState

GOLDEN = Path(__file__).parent / "data" / "torch_golden.npz"
ADAM_GOLDEN = Path(__file__).parent / "data" / "torch_adam_golden.npz"
LR = 2e-3
OUTPUT_ATOL = 1e-5   # mean, stddev, reconstruction probabilities, running statistics
LOSS_RTOL = 1e-4     # one batch loss
PARAM_ATOL = 1e-5    # parameters after one Adam step
TINY_GRAD = 1e-5     # below it, a first Adam step mostly reflects gradient rounding
CURVE_RTOL = 1e-3    # each loss of the 20-step run (float32 rounding grows over the steps)
# The convolutions whose output goes straight into a BatchNorm: in training the batch mean
# cancels their bias, which therefore gets a zero gradient.
BIASES_BEFORE_BATCHNORM = ("encode.disc.0.0.bias", "encode.disc.1.0.bias",
                           "decode.gen.0.0.bias", "decode.gen.1.0.bias", "decode.gen.2.0.bias")


def _section(golden: dict, prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return dict(data)


@pytest.fixture(scope="module")
def state_dict(golden) -> dict[str, np.ndarray]:
    return _section(golden, "state_dict/")


@pytest.fixture(scope="module")
def variables(state_dict) -> dict:
    return from_torch_state_dict(state_dict)


def _sample_and_decode(module, images, eps, *, train):
    """The course's forward pass with its noise given: z = mean + stddev * eps (= rsample)."""
    mean, stddev = module.encode(images, train=train)
    return module.decode(mean + stddev * eps, train=train), mean, stddev


class Runner:
    """Jitted evaluation of `VAE(implementation=...)`, and the library's own training step on
    it: `steps.train_step` with `train_state.make_optimizer`'s Adam and
    `TrainState.apply_gradients`, as `train.py` runs it, with one change: z is drawn from
    PyTorch's noise `eps` instead of the state's key."""

    def __init__(self, implementation: str):
        self.model = VAE(implementation=implementation)
        self.evaluate = jax.jit(self._evaluate)
        self.train_step = jax.jit(self._train_step)

    def _evaluate(self, variables, images, eps):
        """Eval mode -> (probabilities, mean, stddev, loss)."""
        logits, mean, stddev = self.model.apply(
            variables, images, eps, train=False, method=_sample_and_decode)
        return jax.nn.sigmoid(logits), mean, stddev, vae_loss(logits, images, mean, stddev)[0]

    def new_state(self, variables) -> TrainState:
        """A training state from `variables` as a run makes one: the library's optimizer at
        the course's learning rate, fresh, at step 0."""
        return TrainState.create(apply_fn=self.model.apply, params=variables["params"],
                                 batch_stats=variables["batch_stats"],
                                 tx=train_state.make_optimizer(TrainConfig().learning_rate),
                                 key=jax.random.key(0))

    def _apply_with_noise(self, variables, images, key, *, eps, **kwargs):
        """`VAE.apply` as the step calls it, with z = mean + stddev * eps (PyTorch's noise)
        where the model would draw eps from `key`."""
        return self.model.apply(variables, images, eps, method=_sample_and_decode, **kwargs)

    def _train_step(self, state, images, eps):
        """One step of the library's training loop on `images` with noise `eps`.

        Returns (the new state, (probabilities, mean, stddev, loss, grads)): the train-mode
        outputs before the update, the course's summed loss, and the step's gradients.
        """
        noisy = state.replace(apply_fn=functools.partial(self._apply_with_noise, eps=eps))
        new_state, metrics = steps.train_step(noisy, images)
        grads, _, _ = steps.elbo_gradients(noisy, images, state.key, COURSE_KL_WEIGHT)
        (logits, mean, stddev), _ = self._apply_with_noise(
            state.variables, images, None, eps=eps, train=True, mutable=["batch_stats"])
        loss = metrics["loss"] * images.shape[0]  # the batch mean, as the course sums it
        return (new_state.replace(apply_fn=self.model.apply),
                (jax.nn.sigmoid(logits), mean, stddev, loss, grads))

    def run_curve(self, variables, all_images, all_eps) -> np.ndarray:
        """Losses of len(all_images) library training steps from `variables`."""
        state, losses = self.new_state(variables), []
        for images, eps in zip(all_images, all_eps):
            state, (_, _, _, loss, _) = self.train_step(state, images, eps)
            losses.append(loss)
        return np.asarray(jnp.stack(losses))


@functools.cache
def get_runner(implementation: str) -> Runner:
    return Runner(implementation)


@pytest.fixture(scope="module", params=["xla", "matmul", "winograd"])
def runner(request) -> Runner:
    return get_runner(request.param)


@pytest.fixture(scope="module")
def one_step(runner, variables, golden) -> dict:
    """One library training step from the imported weights on the golden batch."""
    state, (probabilities, mean, stddev, loss, grads) = runner.train_step(
        runner.new_state(variables), golden["images"], golden["eps"])
    assert int(state.step) == 1
    return {"params": state.params, "batch_stats": state.batch_stats, "grads": grads,
            "outputs": (probabilities, mean, stddev, loss)}


def tiny_gradient(adam_step: np.ndarray) -> np.ndarray:
    """Where |g| < TINY_GRAD, read off a first Adam step, -lr * g / (|g| + 1e-8)."""
    ratio = np.abs(adam_step.astype(np.float64)) / LR  # |g| / (|g| + eps)
    return 1e-8 * ratio < TINY_GRAD * (1 - ratio)


def _as_state_dict(params, batch_stats) -> dict[str, np.ndarray]:
    return to_torch_state_dict({"params": params, "batch_stats": batch_stats})


# ----------------------------------------------------------------------------------------
# The conversion itself


def test_importing_torch_port_does_not_import_torch():
    code = ("import sys, vae_jax, vae_jax.interop.torch_port; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_state_dict_maps_onto_every_model_variable_with_its_shape(variables):
    expected = variable_shapes(VAE())
    chex.assert_trees_all_equal_structs(variables, expected)
    chex.assert_trees_all_equal_shapes_and_dtypes(variables, expected)


def test_conv_weight_is_permuted_to_hwio_and_conv_transpose_weight_keeps_in_out_order(
        state_dict, variables):
    conv = state_dict["encode.disc.1.0.weight"]       # (out, in, kH, kW) = (32, 16, 4, 4)
    deconv = state_dict["decode.gen.1.0.weight"]      # (in, out, kH, kW) = (256, 128, 4, 4)
    kernel = variables["params"]["encoder"]["conv2"]["kernel"]
    dkernel = variables["params"]["decoder"]["deconv2"]["kernel"]
    assert kernel.shape == (4, 4, 16, 32) and dkernel.shape == (4, 4, 256, 128)
    np.testing.assert_array_equal(kernel[1, 2, 3, 5], conv[5, 3, 1, 2])
    np.testing.assert_array_equal(dkernel[1, 2, 3, 5], deconv[3, 5, 1, 2])  # no flip


def test_round_trip_is_exact(state_dict, variables):
    back = to_torch_state_dict(variables)
    chex.assert_trees_all_equal(back, state_dict)
    chex.assert_trees_all_equal(from_torch_state_dict(back), variables)


def test_accepts_torch_like_tensors_without_importing_torch(state_dict, variables):
    class FakeTensor:  # what the converter uses of a torch.Tensor: .detach().cpu() -> array
        def __init__(self, array):
            self.array = array

        def detach(self):
            return self

        def cpu(self):
            return self

        def __array__(self, dtype=None, copy=None):
            return self.array if dtype is None else self.array.astype(dtype)

    tensors = {k: FakeTensor(v) for k, v in state_dict.items()}
    tensors["encode.disc.0.1.num_batches_tracked"] = FakeTensor(np.array(30))  # ignored
    chex.assert_trees_all_equal(from_torch_state_dict(tensors), variables)


def test_missing_key_is_a_value_error_naming_it(state_dict):
    broken = dict(state_dict)
    del broken["decode.gen.2.1.running_var"]
    with pytest.raises(ValueError, match=r"missing key 'decode.gen.2.1.running_var'.*\(64,\)"):
        from_torch_state_dict(broken)


def test_unexpected_key_is_a_value_error_naming_it(state_dict):
    broken = dict(state_dict, **{"encode.disc.3.0.weight": np.zeros((1,), np.float32)})
    with pytest.raises(ValueError, match=r"unexpected key 'encode.disc.3.0.weight'"):
        from_torch_state_dict(broken)


@pytest.mark.parametrize("key, value, message", [
    ("decode.gen.1.0.weight", {"data": [1.0]},
     r"'decode.gen.1.0.weight' is not a tensor \(got dict\)"),
    ("decode.gen.0.0.weight", {"data": [1.0]},
     r"'decode.gen.0.0.weight' is not a tensor \(got dict\)"),
    ("encode.disc.0.1.bias", "zeros", r"'encode.disc.0.1.bias' is not a tensor \(got str\)"),
    ("encode.disc.0.1.bias", [[1.0], [2.0, 3.0]], r"'encode.disc.0.1.bias' is not a tensor of "
                                                 r"numbers \(got list"),
    ("decode.gen.0.0.weight", np.zeros(3, np.float32), r"a ConvTranspose2d weight has 4 axes"),
    (7, np.zeros(3, np.float32), r"unexpected key 7"),
])
def test_odd_entries_are_a_value_error_naming_the_key(state_dict, key, value, message):
    broken = dict(state_dict)
    broken[key] = value
    with pytest.raises(ValueError, match=message):
        from_torch_state_dict(broken)


def test_wrong_shape_is_a_value_error_with_both_shapes(state_dict):
    broken = dict(state_dict)
    broken["encode.disc.1.0.weight"] = np.zeros((32, 16, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"'encode.disc.1.0.weight': expected "
                                         r"\(32, 16, 4, 4\).*got \(32, 16, 3, 3\)"):
        from_torch_state_dict(broken)


def test_other_z_dim_is_inferred_or_refused():
    shapes16 = variable_shapes(VAE(z_dim=16))
    zeros16 = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes16)
    state_dict16 = to_torch_state_dict(zeros16)
    assert state_dict16["encode.disc.2.0.weight"].shape == (32, 32, 4, 4)  # 2 * z_dim outputs
    chex.assert_trees_all_equal_shapes(from_torch_state_dict(state_dict16), zeros16)
    with pytest.raises(ValueError, match=r"z_dim=16.*z_dim=32 was requested"):
        from_torch_state_dict(state_dict16, z_dim=32)


def test_command_line_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    code = torch_port_main([str(tmp_path / "absent.pt"), "--workdir", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1
    assert stderr.startswith("python -m vae_jax.commands.torch_port: error: no such file: ")
    assert not (tmp_path / "out").exists()


class StandInTorch:
    """`torch` as `vae-jax-torch-port` uses it (`torch.load` alone), without PyTorch: the
    command's success path runs on every machine, not only where torch is installed."""

    def __init__(self, loaded):
        self.loaded, self.calls = loaded, []

    def load(self, path, map_location=None, weights_only=False):
        self.calls.append((str(path), map_location, weights_only))
        return self.loaded


def three_channel_state_dict() -> dict:
    shapes = variable_shapes(VAE(im_chan=3))
    return to_torch_state_dict(jax.tree.map(lambda leaf: np.full(leaf.shape, 0.5, leaf.dtype),
                                            shapes))


@pytest.mark.parametrize("wrap, state", [
    (lambda sd: sd, "golden"), (lambda sd: {"state_dict": sd}, "golden"),
    (lambda sd: {"model_state_dict": sd, "epoch": 7}, "golden"),
    (lambda sd: {"model_state_dict": sd}, "three channels"),
])
def test_the_command_converts_what_torch_load_returns(state_dict, tmp_path, capsys, monkeypatch,
                                                     wrap, state):
    source = state_dict if state == "golden" else three_channel_state_dict()
    torch = StandInTorch(wrap(source))
    monkeypatch.setitem(sys.modules, "torch", torch)
    (tmp_path / "vae.pt").write_bytes(b"stand-in")
    workdir = tmp_path / "imported"
    assert torch_port_main([str(tmp_path / "vae.pt"), "--workdir", str(workdir)]) == 0
    assert torch.calls == [(str(tmp_path / "vae.pt"), "cpu", True)]  # never unpickles code
    im_chan = 1 if state == "golden" else 3
    count = sum(np.size(value) for key, value in source.items()
                if not key.endswith(("running_mean", "running_var")))
    out = capsys.readouterr().out
    assert out == (f"converted {tmp_path / 'vae.pt'} (VAE(z_dim=32, im_chan={im_chan}), "
                   f"{count:,} parameters) -> {workdir}\n")
    model, variables, config = load_model(str(workdir))
    assert (config["z_dim"], config["im_chan"], model.im_chan) == (32, im_chan, im_chan)
    chex.assert_trees_all_equal(variables, jax.tree.map(
        np.asarray, from_torch_state_dict(source, im_chan=im_chan)))


# ----------------------------------------------------------------------------------------
# Numerical parity with PyTorch (both implementations of the convolutions)


def _assert_outputs_match(outputs, golden, mode):
    probabilities, mean, stddev, loss = outputs
    chex.assert_trees_all_close(
        {"mean": mean, "stddev": stddev, "recon": probabilities},
        {k: golden[f"{mode}/{k}"] for k in ("mean", "stddev", "recon")},
        atol=OUTPUT_ATOL, rtol=0)
    chex.assert_trees_all_close(loss, golden[f"{mode}/loss"], rtol=LOSS_RTOL, atol=0)


def test_eval_mode_uses_running_statistics_and_matches_pytorch(runner, variables, golden):
    outputs = runner.evaluate(variables, golden["images"], golden["eps"])
    _assert_outputs_match(outputs, golden, "eval")


def test_train_mode_uses_batch_statistics_and_matches_pytorch(one_step, golden):
    _assert_outputs_match(one_step["outputs"], golden, "train")


def test_conv_transpose_weight_needs_no_flip_with_scatter_semantics(
        runner, state_dict, variables, golden):
    # Imported without a flip, the output matches PyTorch (the eval test above, to 1e-5);
    # flipping the transposed convolutions' kernels spatially, as a gather-style transposed
    # convolution (lax.conv_transpose without a flip) would need, breaks it.
    flipped = dict(state_dict)
    for prefix, _, kind in LAYERS:
        if kind == "deconv":
            flipped[f"{prefix}.weight"] = state_dict[f"{prefix}.weight"][:, :, ::-1, ::-1]
    probabilities = runner.evaluate(from_torch_state_dict(flipped), golden["images"],
                                    golden["eps"])[0]
    assert np.abs(probabilities - golden["eval/recon"]).max() > 0.05


def test_running_var_uses_unbiased_batch_variance(one_step, variables, golden):
    ours = _as_state_dict(variables["params"], one_step["batch_stats"])
    expected = _section(golden, "after_forward/")
    chex.assert_trees_all_close({k: ours[k] for k in expected}, expected,
                                atol=OUTPUT_ATOL, rtol=0)
    # With the biased batch variance (what Flax's nn.BatchNorm keeps) the running variance
    # would be off by 0.1 * var / n, n = values a channel: 16 images x 6 x 6 = 576 here.
    key, count = "decode.gen.1.1.running_var", 16 * 6 * 6
    batch_var = (ours[key] - 0.9 * variables["batch_stats"]["decoder"]["bn2"]["var"]) / 0.1
    biased = ours[key] - 0.1 * batch_var / count
    assert np.abs(biased - expected[key]).max() > 100 * OUTPUT_ATOL


def test_one_adam_step_matches_pytorch_adam(one_step, state_dict, golden):
    # make_optimizer(2e-3) is torch.optim.Adam(lr=0.002): betas (0.9, 0.999), eps 1e-8. The
    # first step moves each parameter by -lr * g / (|g| + eps), whose slope in g,
    # lr * eps / (|g| + eps)^2, magnifies float32 gradient rounding where |g| is tiny: the
    # few elements with |g| < TINY_GRAD (14 of 715,041 here, read off PyTorch's own step) are
    # only held to a step of at most lr; every other element must match to PARAM_ATOL.
    ours = _as_state_dict(one_step["params"], one_step["batch_stats"])
    checked, loose = {}, {}
    for key, step in _section(golden, "adam_step/").items():
        if key in BIASES_BEFORE_BATCHNORM:
            continue  # next test
        tiny = tiny_gradient(step)
        assert tiny.mean() < 1e-3, key
        checked[key] = (ours[key][~tiny], (state_dict[key] + step)[~tiny])
        loose[key] = np.abs(ours[key] - state_dict[key])[tiny]
    chex.assert_trees_all_close({k: a for k, (a, _) in checked.items()},
                                {k: b for k, (_, b) in checked.items()}, atol=PARAM_ATOL, rtol=0)
    assert all(np.all(v <= LR * (1 + 1e-6)) for v in loose.values())


def test_the_librarys_optimizer_is_pytorchs_adam_step_after_step():
    """make_optimizer's updates through TrainState.apply_gradients, fed the gradients that
    torch.optim.Adam(lr=0.002) was fed (scripts/make_adam_golden.py): 30 steps of changing
    scale, where other betas, another eps, weight decay (adamw) or clipping end elsewhere."""
    with np.load(ADAM_GOLDEN) as golden:
        initial, gradients, expected = golden["initial"], golden["gradients"], golden["params"]
    state = TrainState.create(apply_fn=None, params={"w": jnp.asarray(initial, jnp.float32)},
                              tx=train_state.make_optimizer(TrainConfig().learning_rate),
                              batch_stats={}, key=jax.random.key(0))
    apply = jax.jit(lambda state, grads: state.apply_gradients(grads=grads))
    params = []
    for gradient in gradients:
        state = apply(state, {"w": jnp.asarray(gradient, jnp.float32)})
        params.append(state.params["w"])
    assert int(state.step) == len(gradients)
    tolerance = 2e-6  # float32 rounding of parameters of size ~3, over 30 steps
    assert np.abs(expected[-1] - initial).min() > 100 * tolerance  # each one moved
    chex.assert_trees_all_close(np.stack(params), expected.astype(np.float32),
                                atol=tolerance, rtol=0)


def test_conv_biases_before_batchnorm_get_zero_gradient_and_adam_moves_them_by_noise(
        one_step, state_dict, golden):
    # In training the BatchNorm subtracts the batch mean, which cancels these biases: their
    # gradient is zero up to rounding (float64 PyTorch: ~1e-13; float32: ~1e-5), and Adam,
    # dividing by the gradient's own RMS, turns rounding noise into steps of up to lr.
    # PyTorch float32 does the same; no implementation can match another here.
    grads = _as_state_dict(one_step["grads"], one_step["batch_stats"])
    ours = _as_state_dict(one_step["params"], one_step["batch_stats"])
    other_grads = [np.abs(golden[f"grads/{k}"]).max() for k in (
        "encode.disc.2.0.bias", "decode.gen.3.0.bias", "encode.disc.0.1.bias")]
    assert min(other_grads) > 1.0
    for key in BIASES_BEFORE_BATCHNORM:
        assert np.abs(golden[f"grads/{key}"]).max() < 1e-9, key
        assert np.abs(grads[key]).max() < 1e-3, key
        assert np.abs(golden[f"adam_step/{key}"]).max() < 1e-6, key
        assert np.abs(ours[key] - state_dict[key]).max() <= LR * (1 + 1e-6), key


def test_twenty_step_loss_curve_matches_pytorch(variables, golden):
    # One implementation only, the one "auto" takes here: training differs between them by
    # no more than their forward passes and single Adam steps, checked above for each; and
    # a step of "xla", XLA:CPU's transposed convolution, costs ~0.3 s even at batch 16. The
    # tolerance allows for float32 rounding amplified by 20 Adam steps: PyTorch's own
    # float32 run drifts from its float64 one by up to 7.4e-4 here (vae-jax float32:
    # 4.0e-4 with "matmul", 5.9e-4 with "winograd"; vae-jax in float64: 4e-8).
    losses = get_runner(convolutions.resolve_implementation("auto")).run_curve(
        variables, golden["curve_images"], golden["curve_eps"])
    chex.assert_trees_all_close(losses, golden["curve_losses"], rtol=CURVE_RTOL, atol=0)
