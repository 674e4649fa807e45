"""A run's settings are checked against JAX's int32 step counter and indices and against
the memory of its largest step before anything is written (issue 41's sweep: each of these
values used to crash a started run)."""

import pytest
import tensorflow_datasets as tfds

from vae_jax.commands import train as train_command
from vae_jax.runtime.errors import InputError
from vae_jax.training.config import TrainConfig
from vae_jax.training.run_limits import check_run_fits, decoded_image_floats

STEPS_PER_EPOCH = 59  # MNIST's 60,000 images in batches of 1024
MEMORY = 24 * 2**30   # this machine's


@pytest.mark.parametrize("settings, refusal, fitting", [
    (dict(lr_warmup_epochs=300_000_000, lr_schedule="cosine", lr_decay_epochs=300_000_001),
     "--lr-warmup-epochs 300000000: 300,000,000 epochs of 59 steps are more steps than "
     "JAX's int32 step counter holds; at most 36,398,027 epochs",
     dict(lr_warmup_epochs=36_398_026, lr_decay_epochs=36_398_027)),
    (dict(kl_warmup_epochs=300_000_000), "--kl-warmup-epochs 300000000: ",
     dict(kl_warmup_epochs=36_398_027)),
    (dict(lr_schedule="exponential", lr_decay_epochs=10**15),
     f"--lr-decay-epochs {10**15}: ", dict(lr_decay_epochs=36_398_027)),
    (dict(epochs=10**9), "--epochs 1000000000: ", dict(epochs=36_398_027)),
    (dict(objective="iwae", objective_samples=10**9),
     "--objective-samples 1000000000: 1,000,000,000 samples of 1024 images decode to more "
     "pixels than JAX's int32 indices reach; at most 84 at --batch-size 1024",
     dict(objective_samples=84)),
    (dict(objective="iwae", objective_samples=2000, batch_size=256),
     "--objective-samples 2000 with --batch-size 256: a step decodes 512,000 images at once, "
     "about 141.2 GiB with their gradients, more than the 24.0 GiB of memory here; "
     "--objective-samples 339 fits at --batch-size 256", dict(objective_samples=339)),
    (dict(batch_size=200_000), "--batch-size 200000: a step decodes 200,000 images at once, "
     "about 55.2 GiB with their gradients, more than the 24.0 GiB of memory here; "
     "--batch-size 87003 fits", dict(batch_size=87_003)),
])
def test_each_value_that_crashed_a_started_run_is_refused_with_one_that_fits(
        settings, refusal, fitting):
    with pytest.raises(InputError) as error:
        check_run_fits(TrainConfig(**settings), STEPS_PER_EPOCH, MEMORY)
    assert str(error.value).startswith(refusal), str(error.value)
    assert "\n" not in str(error.value)
    check_run_fits(TrainConfig(**{**settings, **fitting}), STEPS_PER_EPOCH, MEMORY)


@pytest.mark.parametrize("settings", [
    dict(),                                                   # the course
    dict(objective="dreg", objective_samples=5, binarize="dynamic", epochs=100,
         lr_schedule="cosine"),                               # binarized_dreg's recipe
    dict(objective="dreg", objective_samples=50, batch_size=1024),
    dict(hidden_dim=32, epochs=100),
])
def test_the_shipped_recipes_fit(settings):
    check_run_fits(TrainConfig(**settings), STEPS_PER_EPOCH, MEMORY)


def test_memory_is_checked_only_where_known_and_per_device():
    big = TrainConfig(batch_size=200_000)
    check_run_fits(big, 1, None)                  # unknown memory: not checked
    check_run_fits(big, 1, MEMORY, devices=8)     # 25,000 images a device fit
    with pytest.raises(InputError, match="on each of 2 devices"):
        check_run_fits(big, 1, MEMORY, devices=2)


def test_the_decoders_activations_are_counted_from_its_layers():
    # 3x3x256 + 6x6x128 + 13x13x64 + 28x28x1 at the course's width; four times that wider.
    assert decoded_image_floats(16) == 2304 + 4608 + 10816 + 784
    assert decoded_image_floats(32) - 784 == 2 * (decoded_image_floats(16) - 784)


def test_the_command_refuses_before_anything_is_written(tmp_path, capsys):
    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=48):
        status = train_command.main(["--kl-warmup-epochs", "1000000000", "--batch-size", "16",
                                     "--workdir", str(workdir), "--data-dir",
                                     str(tmp_path / "data"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("train.py: error: --kl-warmup-epochs 1000000000: 1,000,000,000 "
                          "epochs of 3 steps")
    assert err.count("\n") == 1
    assert not workdir.exists() or not any(workdir.iterdir())


def test_a_model_too_big_for_memory_names_both_width_flags(monkeypatch):
    from vae_jax import VAE
    from vae_jax.runtime import platforms
    from vae_jax.training import loop
    monkeypatch.setattr(platforms, "memory_bytes", lambda: MEMORY)
    config = TrainConfig(hidden_dim=10_000)
    with pytest.raises(InputError) as refused:
        loop.check_fits_in_memory(VAE(**config.model_config()), config)
    assert str(refused.value).startswith("--z-dim 32 --hidden-dim 10000: the model has ")
    loop.check_fits_in_memory(VAE(), TrainConfig())  # the course's fits
