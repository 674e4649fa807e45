"""A training run's settings, each defined once: its name, type, default and help text.

`TrainConfig()` is the course's recipe. `train.py`'s flags are derived from its fields
(`vae_jax.commands.cli.add_config_flags`: `batch_size` becomes `--batch-size`, a `Literal` type
becomes a choice, a `True` boolean becomes `--no-...`), and a run stores it once, as
`config.json` in its workdir, next to the model configuration (`z_dim`, `im_chan`) that
`vae_jax.load_model` reads. The settings marked `resume_must_match` are those a
resumed run must share with the saved one for the result to be the same.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Literal, Mapping

import optax

from vae_jax.kernels.convolutions import Implementation
from vae_jax.model.binarize import BinarizeMode
from vae_jax.model.objectives import Objective, ObjectiveName
from vae_jax.runtime.errors import NON_NEGATIVE, InputError, is_non_negative
from vae_jax.training import schedules
from vae_jax.training.schedules import LearningRateScheduleName

EpochMode = Literal["auto", "steps", "scan"]
MAX_SEED = 2**32 - 1  # a PRNG key holds 32 bits of seed: larger seeds would wrap around


def setting(default, help: str, *, positive: bool = False, non_negative: bool = False,
            maximum: int | None = None, resume_must_match: bool = False,
            flag: str | None = None, default_text: str | None = None,
            metavar: str | None = None):
    """A TrainConfig field: its default plus what the command line needs to know.

    `positive`: values <= 0 are refused; `non_negative`: negative or non-finite ones;
    `maximum`: an int bound from above, from 0 (`seed` takes 0..MAX_SEED). `flag`: the
    flag's spelling when it is not `--field-name` (e.g. `--no-download` for
    `download=True`). `default_text`: how the help shows the default, when not the value
    itself.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "positive": positive, "non_negative": non_negative, "maximum": maximum,
        "resume_must_match": resume_must_match, "flag": flag, "default_text": default_text,
        "metavar": metavar})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A run's settings; the defaults are the course's recipe (MNIST, 10 epochs, batch 1024,
    Adam at a constant 2e-3, z_dim 32)."""

    epochs: int = setting(10, "passes over the training split", positive=True)
    batch_size: int = setting(
        1024, "images per step; every image is used every epoch, the last batch is smaller",
        positive=True, resume_must_match=True)
    learning_rate: float = setting(2e-3, "Adam's learning rate (betas 0.9/0.999, eps 1e-8), "
                                   "the peak of a schedule",
                                   positive=True, resume_must_match=True)
    lr_schedule: LearningRateScheduleName = setting(
        "constant", "how the learning rate moves after the warm-up: constant (the course's); "
        "cosine or exponential, a decay to --lr-end-fraction of it by epoch --lr-decay-epochs, "
        "held there after", resume_must_match=True)
    lr_warmup_epochs: int = setting(
        0, "raise the learning rate linearly from 0 over the first N epochs, step by step",
        non_negative=True, resume_must_match=True, metavar="N")
    lr_decay_epochs: int = setting(
        0, "the epoch by which a cosine or exponential decay ends, warm-up included (a run "
        "stores it resolved: to train on past it, pass it again)", positive=True,
        resume_must_match=True, default_text="--epochs", metavar="N")
    lr_end_fraction: float = setting(
        0.01, "where a decay ends, as a fraction of --learning-rate (0 to 1)", positive=True,
        resume_must_match=True, metavar="F")
    z_dim: int = setting(32, "latent dimensions", positive=True, resume_must_match=True)
    hidden_dim: int = setting(
        16, "the encoder's first convolution's channels (the course's 16); the others scale "
        "with it: the encoder's second has twice as many, the decoder's 16x, 8x and 4x",
        positive=True, resume_must_match=True)
    objective: ObjectiveName = setting(
        "elbo", "what training maximises: elbo (the course's); iwae, the importance-weighted "
        "bound with --objective-samples K; dreg, the same bound with the doubly-"
        "reparameterized gradient for the encoder (the test loss reported is the ELBO "
        "either way)", resume_must_match=True)
    objective_samples: int = setting(
        1, "K, the importance samples per image of iwae and dreg (1 for elbo)",
        positive=True, resume_must_match=True, metavar="K")
    kl_weight: float = setting(
        1.0, "beta, the weight of the KL term in the loss that is optimised (1: the course; "
        "0: an autoencoder; above 1: a beta-VAE); the negative ELBO reported is always the "
        "true one", non_negative=True, resume_must_match=True)
    kl_warmup_epochs: int = setting(
        0, "raise beta linearly from 0 to --kl-weight over the first N epochs, step by step",
        non_negative=True, resume_must_match=True, metavar="N")
    seed: int = setting(0, f"everything random (init, shuffling, samples) derives from it; "
                        f"0 to {MAX_SEED}", maximum=MAX_SEED, resume_must_match=True)
    init_from: str | None = setting(
        None, "start from the weights and BatchNorm statistics of a run's workdir, a folder "
        "of saved variables (vae-jax-torch-port's) or pretrained:NAME, with a fresh optimizer "
        "and schedules; the architecture must match", resume_must_match=True,
        metavar="SOURCE", default_text="a fresh initialisation")
    dataset: str = setting("mnist", "a tfds dataset of 28x28 grayscale images (mnist, "
                           "fashion_mnist, kmnist, ...), or an arrays file FILE.npz, read "
                           "without TensorFlow (vae-jax-export-data writes one)",
                           resume_must_match=True)
    data_dir: str | None = setting(None, "tfds data directory",
                                   default_text="$TFDS_DATA_DIR, else tfds' own")
    download: bool = setting(True, "fail at once if the dataset is not in the data directory",
                             flag="--no-download")
    train_split: str = setting("train", "tfds split to train on, e.g. 'train[:10%]'",
                               resume_must_match=True)
    test_split: str = setting("test", "tfds split to evaluate on after each epoch")
    binarize: BinarizeMode = setting(
        "none", "dynamic: train and test on Bernoulli(pixel) images, redrawn every batch, as "
        "the literature does; none: grayscale targets, as in the course",
        resume_must_match=True)
    epoch_mode: EpochMode = setting(
        "auto", "steps: a jitted step per batch, with a progress bar; scan: the epoch as one "
        "jitted lax.scan on the device; auto: steps on CPU, scan on GPU/TPU (the two differ "
        "in the last bits, so a run resumes in the mode it started with)",
        resume_must_match=True)
    implementation: Implementation = setting(
        "auto", "convolution implementation (vae_jax.kernels.convolutions): auto takes "
        "winograd on CPU, matmul on GPU, xla on TPU")
    checkpoint_every: int = setting(
        0, "also save a checkpoint every N steps (steps epochs only)", positive=True,
        default_text="at epoch ends only", metavar="N")
    keep: int = setting(3, "checkpoints to keep", positive=True)
    devices: int = setting(
        0, "use the first N devices of each run (the batch is split among them; the numbers "
        "do not change)", positive=True, default_text="all", metavar="N")

    def __post_init__(self):
        for name, choices in _choices(type(self)).items():
            if getattr(self, name) not in choices:
                raise InputError(f"{name} must be one of {', '.join(choices)}, got "
                                 f"{getattr(self, name)!r}")
        for field in dataclasses.fields(self):
            value, meta = getattr(self, field.name), field.metadata
            if meta["positive"] and not value > 0 and not (value == 0 == field.default):
                raise InputError(f"{field.name} must be positive, got {value}")
            if meta["non_negative"] and not is_non_negative(value):
                raise InputError(f"{field.name} {NON_NEGATIVE}, got {value}")
            if meta["maximum"] is not None and not 0 <= value <= meta["maximum"]:
                raise InputError(f"{field.name} must be in 0..{meta['maximum']}, got {value}")
        if self.objective == "elbo" and self.objective_samples != 1:
            raise InputError(f"objective_samples {self.objective_samples} needs objective iwae "
                             "or dreg: the ELBO takes one sample")
        self._check_learning_rate()
        if self.objective != "elbo" and (self.kl_weight != 1 or self.kl_warmup_epochs):
            raise InputError(f"objective {self.objective} bounds log p(x) itself: kl_weight "
                             "and kl_warmup_epochs are for the elbo objective")

    def _check_learning_rate(self) -> None:
        if self.lr_end_fraction > 1:
            raise InputError(f"lr_end_fraction must be at most 1, got {self.lr_end_fraction}")
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        if self.lr_schedule == "constant":
            for name in ("lr_decay_epochs", "lr_end_fraction"):
                if getattr(self, name) != defaults[name]:
                    raise InputError(f"{name} {getattr(self, name)} needs lr_schedule cosine "
                                     "or exponential: the constant rate does not decay")
        elif self.lr_decay_end() <= self.lr_warmup_epochs:
            raise InputError(f"the {self.lr_schedule} decay ends at epoch "
                             f"{self.lr_decay_end()}, not after the {self.lr_warmup_epochs} "
                             "epochs of warm-up: lengthen lr_decay_epochs or epochs")

    def learning_rate_schedule(self, steps_per_epoch: int) -> optax.ScalarOrSchedule:
        """The run's learning rate, a number or an optax schedule of the step
        (`lr_decay_epochs` resolved, see `lr_decay_end`)."""
        return schedules.learning_rate_schedule(
            self.learning_rate, self.lr_schedule,
            warmup_steps=self.lr_warmup_epochs * steps_per_epoch,
            decay_steps=self.lr_decay_end() * steps_per_epoch,
            end_fraction=self.lr_end_fraction)

    def kl_weight_schedule(self, steps_per_epoch: int) -> optax.Schedule:
        """The run's β: `kl_weight`, reached over the first `kl_warmup_epochs` epochs."""
        return schedules.kl_weight_schedule(self.kl_weight,
                                            self.kl_warmup_epochs * steps_per_epoch)

    def lr_decay_end(self) -> int:
        """The epoch by which the learning rate has decayed: `lr_decay_epochs`, else
        `epochs`; 0 for the constant rate, which does not decay."""
        if self.lr_schedule == "constant":
            return 0
        return self.lr_decay_epochs or self.epochs

    def training_objective(self) -> Objective:
        """What the training step minimises (`vae_jax.model.objectives`)."""
        return Objective(self.objective, self.objective_samples)

    def model_config(self) -> dict[str, Any]:
        """What `vae_jax.VAE` is built from: `{"z_dim": ..., "im_chan": 1, "hidden_dim": ...}`."""
        return {"z_dim": self.z_dim, "im_chan": 1, "hidden_dim": self.hidden_dim}

    def to_json(self) -> dict[str, Any]:
        """What config.json holds for a training run: the model configuration and every
        setting, in one flat object."""
        return {**self.model_config(), **dataclasses.asdict(self)}

    def check_resumable(self, saved: Mapping[str, Any], directory: str) -> None:
        """Raises ResumeMismatchError naming the first setting that differs from `saved`
        (a run's config.json) where the result would differ. A run stores its modes
        resolved (`epoch_mode` "steps" or "scan"); a saved "auto" is not compared. A setting
        that `saved` lacks (it is older than the setting) ran at today's default."""
        for field in dataclasses.fields(self):
            name = field.name
            value = saved.get(name, field.default)
            if field.metadata["resume_must_match"] and (
                    value != getattr(self, name)) and value != "auto":
                given = getattr(self, name)
                raise ResumeMismatchError(
                    f"{flag_name(field)} {'(not given)' if given is None else given} differs "
                    f"from {'nothing' if value is None else value} of the run saved in "
                    f"{directory}; pass the same value, or --fresh --overwrite to start over")


class ResumeMismatchError(InputError):
    """The flags differ from those of the run being resumed, where they must not."""


@functools.cache
def _choices(config_class: type) -> dict[str, tuple]:
    """The allowed values of each `Literal`-typed field of a settings dataclass."""
    return {name: typing.get_args(kind)
            for name, kind in typing.get_type_hints(config_class).items()
            if typing.get_origin(kind) is Literal}


def flag_name(field: dataclasses.Field) -> str:
    """The command-line spelling of a TrainConfig field: `--batch-size`, `--no-download`."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")
