"""A run's settings (vae_jax.training.config): defined once, checked once, stored in config.json."""

import dataclasses

import pytest

from vae_jax.checkpoints.config_file import read_config_file, write_config_file
from vae_jax.runtime.errors import InputError
from vae_jax.training.config import ResumeMismatchError, TrainConfig


def test_the_settings_a_resume_must_match():
    must_match = {field.name for field in dataclasses.fields(TrainConfig)
                  if field.metadata["resume_must_match"]}
    assert must_match == {"z_dim", "batch_size", "learning_rate", "seed", "dataset",
                          "train_split", "binarize", "epoch_mode", "kl_weight",
                          "kl_warmup_epochs", "hidden_dim", "objective", "objective_samples",
                          "lr_schedule", "lr_warmup_epochs", "lr_decay_epochs",
                          "lr_end_fraction", "init_from"}


def test_a_resume_with_other_settings_is_refused_naming_the_flag(tmp_path):
    saved = TrainConfig(batch_size=64).to_json()
    TrainConfig(batch_size=64, epochs=20, keep=5).check_resumable(saved, "runs/a")
    with pytest.raises(ResumeMismatchError,
                       match=r"^--batch-size 128 differs from 64 of the run saved in runs/a; "):
        TrainConfig(batch_size=128).check_resumable(saved, "runs/a")
    with pytest.raises(ResumeMismatchError, match="^--binarize dynamic differs from none"):
        TrainConfig(batch_size=64, binarize="dynamic").check_resumable(saved, "runs/a")
    fine_tuned = TrainConfig(init_from="pretrained:course").to_json()
    with pytest.raises(ResumeMismatchError, match=r"^--init-from \(not given\) differs from "
                                                  r"pretrained:course of the run saved in "):
        TrainConfig().check_resumable(fine_tuned, "runs/a")
    with pytest.raises(ResumeMismatchError, match="^--init-from runs/b differs from nothing of"):
        TrainConfig(batch_size=64, init_from="runs/b").check_resumable(saved, "runs/a")


def test_a_setting_older_than_the_saved_run_is_compared_with_its_default():
    saved = TrainConfig().to_json()
    del saved["kl_weight"], saved["kl_warmup_epochs"]  # a run saved before they existed
    TrainConfig(kl_weight=1.0).check_resumable(saved, "runs/a")
    with pytest.raises(ResumeMismatchError, match="^--kl-weight 0.5 differs from 1.0 of"):
        TrainConfig(kl_weight=0.5).check_resumable(saved, "runs/a")


@pytest.mark.parametrize("kl_weight", [-1.0, float("nan"), float("inf")])
def test_a_kl_weight_must_be_a_finite_number_at_least_zero(kl_weight):
    with pytest.raises(InputError, match="kl_weight must be a finite number >= 0"):
        TrainConfig(kl_weight=kl_weight)


@pytest.mark.parametrize("field, value", [("binarize", "static"), ("epoch_mode", "fast"),
                                          ("implementation", "gpu")])
def test_modes_are_checked_when_the_config_is_made(field, value):
    with pytest.raises(InputError, match=f"{field} must be one of .*, got '{value}'"):
        TrainConfig(**{field: value})


def test_config_json_holds_the_model_and_every_setting(tmp_path):
    config = TrainConfig(z_dim=8, seed=3)
    write_config_file(str(tmp_path), config.to_json())
    saved = read_config_file(str(tmp_path))
    assert saved["z_dim"] == 8 and saved["im_chan"] == 1
    assert TrainConfig(**{name: saved[name] for name in dataclasses.asdict(config)}) == config
    assert read_config_file(str(tmp_path / "elsewhere")) == {}
