"""Training: `train_and_evaluate`, the story of a run, and the epochs it is made of.

Restore the newest checkpoint or initialise; then for each epoch, the steps (with hooks:
finite check, periodic checkpoint, stop signal, progress bar), the test split's negative
ELBO (`vae_jax.evaluation.elbo.neg_elbo`), one writer for the epoch's record and pictures
(`vae_jax.training.writers`), and a checkpoint.

Two ways to run an epoch, with the same result:

* "steps": a Python loop over batches gathered on the host, one jitted `train_step` each,
  with the hooks after every step;
* "scan": the whole training set on the device and the epoch as one jitted `lax.scan`
  (shuffling on the device, donated state, no host synchronisation inside the epoch).

`epoch_mode="auto"` picks "steps" on CPU and "scan" on GPU/TPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from typing import Callable

import jax
import numpy as np
import optax

from vae_jax.checkpoints.config_file import read_config_file, write_config_file
from vae_jax.checkpoints.run_checkpoints import RunCheckpoints, ShouldSave
from vae_jax.checkpoints.workdir import (
    check_workdir,
    clear_run_outputs,
    command_line,
    exclusive,
    has_checkpoints,
)
from vae_jax.data import input_pipeline
from vae_jax.evaluation import elbo, likelihood
from vae_jax.model.losses import METRIC_NAMES
from vae_jax.model.vae import VAE, variable_shapes
from vae_jax.runtime import platforms
from vae_jax.runtime.distributed import is_main_process
from vae_jax.runtime.errors import InputError
from vae_jax.runtime.mesh import DataParallel, barrier, host, to_host
from vae_jax.training import hooks, resume, run_limits
from vae_jax.training.config import EpochMode, TrainConfig
from vae_jax.training.init_from import InitialModel, load_initial_model
from vae_jax.training.schedules import value_at
from vae_jax.training.steps import make_train_epoch, make_train_step
from vae_jax.training.train_state import (
    RunKeys,
    TrainState,
    create_train_state,
    make_optimizer,
    step_of,
)
from vae_jax.training.writers import EpochPictures, EpochWriter

NUM_RECONSTRUCTIONS = 25  # test images shown beside their reconstructions each epoch
NUM_SAMPLES = 64          # prior samples drawn each epoch (the same z every epoch)


def resolve_epoch_mode(epoch_mode: EpochMode) -> str:
    """`"auto"` becomes "steps" on CPU and "scan" on GPU/TPU."""
    if epoch_mode == "auto":
        return "steps" if jax.default_backend() == "cpu" else "scan"
    return epoch_mode


def run_epoch_steps(step_fn: Callable, state: TrainState, images: np.ndarray,
                    epoch_key: jax.Array, batch_size: int, *, first_batch: int = 0,
                    sums: dict | None = None, step_hooks: tuple[hooks.StepHook, ...] = (),
                    place: Callable[[np.ndarray], jax.Array] = jax.numpy.asarray,
                    ) -> tuple[TrainState, dict]:
    """One epoch as a Python loop of jitted steps; returns (state, metrics summed over images).

    `first_batch` and `sums` continue an epoch that was interrupted after that many batches;
    each of `step_hooks` runs after every step. `place` puts each batch on the devices
    (`DataParallel.split`: split over the run's mesh).
    """
    order = np.asarray(input_pipeline.epoch_permutation(epoch_key, images.shape[0]))
    for batch_slice in input_pipeline.batch_slices(images.shape[0], batch_size)[first_batch:]:
        batch = images[order[batch_slice]]
        state, metrics = step_fn(state, place(batch))
        weighted = jax.tree.map(lambda m: m * batch.shape[0], metrics)
        sums = weighted if sums is None else jax.tree.map(jax.numpy.add, sums, weighted)
        for hook in step_hooks:
            hook(state, metrics, sums)
    return state, sums


@functools.partial(jax.jit, static_argnames=("model",))
def _reconstruct_and_sample(model: VAE, variables, images, key, prior_z):
    logits, _, _ = model.apply(variables, images, key, train=False)
    sample_logits = model.apply(variables, prior_z, train=False, method=VAE.decode)
    return jax.nn.sigmoid(logits), jax.nn.sigmoid(sample_logits)


def epoch_pictures(model: VAE, variables: dict, images: np.ndarray, key: jax.Array,
                   prior_z: jax.Array, parallel: DataParallel) -> EpochPictures:
    """The test `images` beside their reconstructions, and the decoded `prior_z` (computed
    on every device of the mesh alike: 25 images need no splitting)."""
    reconstructions, samples = host(_reconstruct_and_sample(
        model, variables, *parallel.replicate((images, key, prior_z))))
    return EpochPictures(originals=images, reconstructions=reconstructions, samples=samples)


def check_fits_in_memory(model: VAE, config: TrainConfig) -> None:
    """Raises InputError when the parameters, their gradients and Adam's two moments alone
    need more memory than the device has (a mistyped --z-dim, say)."""
    count = sum(math.prod(leaf.shape)
                for leaf in jax.tree.leaves(variable_shapes(model)["params"]))
    needed, available = 4 * 4 * count, platforms.memory_bytes()
    if available and needed > available:
        raise InputError(f"--z-dim {config.z_dim} --hidden-dim {config.hidden_dim}: the model "
                         f"has {count:,} parameters, which with their gradients and Adam's "
                         f"state need {needed / 2**30:,.0f} GiB, more than the "
                         f"{available / 2**30:,.0f} GiB of memory here")


class EpochRunner:
    """Runs one epoch of training in the chosen mode: "steps" (a jitted step per batch, with
    the step hooks and a progress bar) or "scan" (one jitted `lax.scan` over the training
    set on the device). Returns (state, the per-image metrics summed over the epoch).
    `kl_weight` is the run's schedule of the KL weight β (`RunSetup.kl_weight`)."""

    def __init__(self, config: TrainConfig, images: np.ndarray, parallel: DataParallel,
                 kl_weight: optax.Schedule, step_hooks: tuple[hooks.StepHook, ...],
                 progress: bool):
        self.config, self.images, self.mode = config, images, config.epoch_mode
        self.parallel, self.step_hooks, self.progress = parallel, step_hooks, progress
        options = dict(binarize=config.binarize == "dynamic", parallel=parallel,
                       kl_weight=kl_weight, objective=config.training_objective())
        self.step_fn = make_train_step(**options)
        self.epoch_fn = make_train_epoch(config.batch_size, **options)
        self.device_images = parallel.replicate(images) if self.mode == "scan" else None

    def __call__(self, state: TrainState, epoch: int, epoch_key: jax.Array, *,
                 first_batch: int = 0, sums: dict | None = None) -> tuple[TrainState, dict]:
        epoch_key = self.parallel.replicate(epoch_key)
        if self.mode == "scan" and first_batch == 0:
            return self.epoch_fn(state, self.device_images, epoch_key)
        with hooks.ProgressBar(len(self.images), self.config.batch_size,
                               first_batch=first_batch, enabled=self.progress,
                               description=f"epoch {epoch}/{self.config.epochs}") as bar:
            return run_epoch_steps(self.step_fn, state, self.images, epoch_key,
                                   self.config.batch_size, first_batch=first_batch, sums=sums,
                                   step_hooks=(*self.step_hooks, bar),
                                   place=self.parallel.split)


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """What stays fixed through a run: its settings, model, mesh, keys and data."""

    config: TrainConfig
    workdir: str
    model: VAE
    parallel: DataParallel
    keys: RunKeys
    train_images: np.ndarray
    test_images: np.ndarray
    initial_model: InitialModel | None = None  # --init-from's weights, else a fresh init

    @property
    def steps_per_epoch(self) -> int:
        return input_pipeline.num_batches(len(self.train_images), self.config.batch_size)

    @property
    def learning_rate(self) -> optax.ScalarOrSchedule:
        return self.config.learning_rate_schedule(self.steps_per_epoch)

    @property
    def kl_weight(self) -> optax.Schedule:
        return self.config.kl_weight_schedule(self.steps_per_epoch)

    @classmethod
    def create(cls, config: TrainConfig, workdir: str, fresh: bool = False) -> "RunSetup":
        """Checks `workdir`, the model's size, --init-from's source (for a run that starts,
        not one that resumes) and the data before anything is written."""
        config = dataclasses.replace(config, epoch_mode=resolve_epoch_mode(config.epoch_mode),
                                     lr_decay_epochs=config.lr_decay_end())
        check_workdir(workdir)
        model = VAE(z_dim=config.z_dim, implementation=config.implementation,
                    hidden_dim=config.hidden_dim)
        check_fits_in_memory(model, config)
        starts = fresh or not has_checkpoints(workdir)  # a resumed run never reads its source
        initial_model = (load_initial_model(config.init_from, config.model_config(), workdir)
                         if config.init_from and starts else None)
        parallel = DataParallel.create(config.devices)
        train_images, test_images = (
            input_pipeline.load_split(config.dataset, split, config.data_dir,
                                      download=config.download)[0]
            for split in (config.train_split, config.test_split))
        parallel.check_batches(len(train_images), config.batch_size)
        run_limits.check_run_fits(
            config, input_pipeline.num_batches(len(train_images), config.batch_size),
            platforms.memory_bytes(), parallel.device_count)
        return cls(config, workdir, model, parallel, RunKeys.from_seed(config.seed),
                   train_images, test_images, initial_model)

    def initial_state(self) -> TrainState:
        """Step 0: a fresh initialisation, or --init-from's weights and BatchNorm statistics
        with a fresh optimizer; the run's own training key either way."""
        optimizer = make_optimizer(self.learning_rate)
        if self.initial_model is None:
            return create_train_state(self.model, optimizer, self.keys.init, self.keys.train)
        source = jax.tree.map(jax.numpy.asarray, self.initial_model.variables)
        return TrainState.create(apply_fn=self.model.apply, params=source["params"],
                                 batch_stats=source["batch_stats"], tx=optimizer,
                                 key=self.keys.train)

    def config_record(self) -> dict:
        """config.json's contents: the settings, and the digest of --init-from's variables."""
        record = self.config.to_json()
        if self.initial_model is not None:
            record["init_from_digest"] = self.initial_model.digest
        elif self.config.init_from:  # resumed: the digest recorded when the run started
            record["init_from_digest"] = read_config_file(self.workdir).get("init_from_digest")
        return record


def test_objective(setup: RunSetup, state: TrainState, test_pass: elbo.ElboPass,
                   epoch: int) -> dict[str, float]:
    """`{"test_objective": minus the IWAE bound with the run's K}` on the test split for an
    iwae or dreg run (the objective's own value, beside the ELBO), reusing the test pass's
    posterior and key; empty for the elbo objective."""
    config = setup.config
    if config.objective == "elbo":
        return {}
    num = config.objective_samples
    log_px = likelihood.iwae_log_likelihoods(
        setup.model, state.variables, test_pass, jax.random.fold_in(setup.keys.eval, epoch),
        num_samples=num, batch_size=config.batch_size,
        chunk_size=likelihood.default_chunk_size(num, config.batch_size),
        parallel=setup.parallel)
    return {"test_objective": -float(np.mean(log_px))}


def periodic_checkpoints(every: int, steps_per_epoch: int) -> ShouldSave | None:
    """orbax's `should_save_fn` for `--checkpoint-every`: every `every` steps inside an
    epoch (None when 0: an epoch's end saves anyway, outside this policy)."""
    if not every:
        return None
    return lambda step, last_saved: step % every == 0 and step % steps_per_epoch != 0


def train_and_evaluate(config: TrainConfig, workdir: str, *, progress: bool = True,
                       log: Callable[[str], None] = print, fresh: bool = False) -> TrainState:
    """Trains for `config.epochs` epochs, resuming from the newest checkpoint in `workdir`.

    Writes per epoch a line of `metrics.jsonl`, `reconstructions_epoch{N}.png`,
    `samples_epoch{N}.png`, TensorBoard events in `tensorboard/` and a checkpoint (also
    every `config.checkpoint_every` steps and on SIGINT/SIGTERM); `config.json` holds the
    settings. `fresh` deletes the earlier run's outputs first. Holds `workdir` exclusively
    while it runs. Raises InputError subclasses (bad data, a busy or unwritable workdir, a
    resume with other settings, a model too large) before anything in `workdir` changes,
    and `Stopped` subclasses when it stops early.
    """
    setup = RunSetup.create(config, workdir, fresh=fresh)
    config, steps_per_epoch = setup.config, setup.steps_per_epoch
    main = is_main_process()  # the process that writes files and prints
    log = log if main else (lambda line: None)
    with exclusive(workdir, command_line()) if main else contextlib.nullcontext(), \
            RunCheckpoints(workdir, keep=config.keep, should_save=periodic_checkpoints(
                config.checkpoint_every, steps_per_epoch)) as run:
        if fresh and main:
            clear_run_outputs(workdir)
        barrier("vae_jax: the workdir is ready")
        state, epoch_sums, restored = resume.restore_or_initialize(
            run, setup.initial_state, config=config, sharding=setup.parallel.replicated)
        state = setup.parallel.replicate(state)
        first_epoch, first_batch = divmod(step_of(state), steps_per_epoch)
        first_epoch += 1
        if restored:
            log(f"resuming the run in {workdir} from its checkpoint at step {step_of(state)} "
                f"(epoch {first_epoch}, batch {first_batch})")
        if main:
            write_config_file(workdir, setup.config_record())
        if first_epoch > config.epochs:
            log(f"nothing to do: the run in {workdir} has already trained {config.epochs} "
                "epochs")
            return state
        log(f"training in {workdir} on {setup.parallel.describe()} ({config.epoch_mode} epochs): "
            f"{len(setup.train_images)} train / {len(setup.test_images)} test images of "
            f"{config.dataset}, batch {config.batch_size}")
        with EpochWriter(workdir, completed_epochs=first_epoch - 1, log=log,
                         enabled=main) as writer:
            return train_epochs(setup, run, writer, state, first_epoch, first_batch,
                                epoch_sums, progress=progress and main)


def train_epochs(setup: RunSetup, run: RunCheckpoints, writer: EpochWriter, state: TrainState,
                 first_epoch: int, first_batch: int, epoch_sums: dict | None, *,
                 progress: bool) -> TrainState:
    """Epochs `first_epoch`..`config.epochs` (the first from batch `first_batch`, with the
    sums so far), each trained, evaluated, written and checkpointed."""
    config, steps_per_epoch = setup.config, setup.steps_per_epoch
    save = hooks.Checkpointer(run, steps_per_epoch)
    picture_key, prior_key = jax.random.split(setup.keys.pictures)
    prior_z = jax.random.normal(prior_key, (NUM_SAMPLES, config.z_dim))
    with hooks.StopSignal(save, steps_per_epoch, run.directory) as stop:
        step_hooks = (hooks.FiniteLoss(steps_per_epoch, run.directory),
                      hooks.PeriodicCheckpoint(run, save), stop)
        run_epoch = EpochRunner(config, setup.train_images, setup.parallel, setup.kl_weight,
                                step_hooks=step_hooks, progress=progress)
        for epoch in range(first_epoch, config.epochs + 1):
            start = time.perf_counter()
            batches_done = first_batch if epoch == first_epoch else 0
            state, sums = run_epoch(state, epoch, jax.random.fold_in(setup.keys.shuffle, epoch),
                                    first_batch=batches_done,
                                    sums=epoch_sums if batches_done else None)
            hooks.require_finite(sums["loss"], "the epoch's training loss", step_of(state),
                                 steps_per_epoch, run.directory)
            train_seconds = time.perf_counter() - start
            test_pass = elbo.neg_elbo(setup.model, state.variables, setup.test_images,
                                      jax.random.fold_in(setup.keys.eval, epoch),
                                      batch_size=config.batch_size,
                                      binarize_mode=config.binarize, parallel=setup.parallel)
            test = test_pass.averages()
            hooks.require_finite(test, "the test loss", step_of(state), steps_per_epoch,
                                 run.directory)
            trained = len(setup.train_images) - batches_done * config.batch_size
            record = {"epoch": epoch, "step": step_of(state),
                      **{f"train_{name}": float(to_host(sums[name])) / len(setup.train_images)
                         for name in METRIC_NAMES},
                      **{f"test_{name}": test[name] for name in METRIC_NAMES},
                      **test_objective(setup, state, test_pass, epoch),
                      "kl_weight": value_at(setup.kl_weight, step_of(state) - 1),
                      "learning_rate": value_at(setup.learning_rate, step_of(state) - 1),
                      "images_per_sec": trained / train_seconds,
                      "seconds": time.perf_counter() - start,
                      "devices": setup.parallel.device_count,
                      "processes": setup.parallel.process_count}
            # Write, then checkpoint: a resumed run redoes an epoch whose checkpoint is
            # missing and drops its line, so metrics.jsonl always matches the checkpoints.
            writer.write(record, epoch_pictures(setup.model, state.variables,
                                                setup.test_images[:NUM_RECONSTRUCTIONS],
                                                picture_key, prior_z, setup.parallel))
            save(state)
            stop.check(state, None)
    return state
