"""Training: `train_and_evaluate`, the epoch loop, and the `train.py` command line.

The loop reads as the story of a run: restore the newest checkpoint or initialise; then for
each epoch, the steps (with hooks: finite check, periodic checkpoint, stop signal, progress
bar), the test split's negative ELBO (`vae_jax.evaluate.neg_elbo`), one writer for the
epoch's record and pictures (`vae_jax.writers`), and a checkpoint.

Two ways to run an epoch, with the same result:
* "steps": a Python loop over batches gathered on the host, one jitted `train_step` each,
  with the hooks after every step;
* "scan": the whole training set on the device and the epoch as one jitted `lax.scan`
  (shuffling on the device, donated state, no host synchronisation inside the epoch).
`epoch_mode="auto"` picks "steps" on CPU and "scan" on GPU/TPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import glob
import math
import os
import shutil
import sys
import time
from typing import Callable

import jax
import numpy as np

from vae_jax import checkpoints, cli, evaluate, hooks, input_pipeline, platforms
from vae_jax.config import EpochMode, TrainConfig, write_config_file
from vae_jax.errors import InputError
from vae_jax.losses import METRIC_NAMES, KLSchedule
from vae_jax.models import VAE, variable_shapes
from vae_jax.parallel import DataParallel, barrier, host, is_main_process, to_host
from vae_jax.steps import (RunKeys, TrainState, create_train_state, make_optimizer,
                           make_train_epoch, make_train_step, step_of)
from vae_jax.workdir import (CHECKPOINTS_DIR, CONFIG_FILE, METRICS_FILE, QUARANTINE_DIR,
                             TENSORBOARD_DIR, command_line, exclusive, holds_saved_variables,
                             require_writable)
from vae_jax.writers import EpochPictures, EpochWriter

NUM_RECONSTRUCTIONS = 25  # test images shown beside their reconstructions each epoch
NUM_SAMPLES = 64          # prior samples drawn each epoch (the same z every epoch)
# What a run writes into its workdir, besides the epochs' PNG files.
RUN_DIRECTORIES = (CHECKPOINTS_DIR, QUARANTINE_DIR, TENSORBOARD_DIR)
RUN_OUTPUTS = (*RUN_DIRECTORIES, METRICS_FILE, CONFIG_FILE)


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


def check_workdir(workdir: str) -> None:
    """Raises InputError unless a run can write everything it writes in `workdir`, and
    `workdir` does not hold variables saved by `save_variables` (whose config.json the run
    would overwrite)."""
    require_writable(workdir, RUN_OUTPUTS)
    for name in RUN_OUTPUTS:
        path = os.path.join(workdir, name)
        wanted = "directory" if name in RUN_DIRECTORIES else "file"
        if os.path.lexists(path) and os.path.isdir(path) != (wanted == "directory"):
            raise InputError(f"--workdir {workdir}: {path} is not a {wanted}, as a run needs "
                             "it to be; move it away, or choose another --workdir")
    if holds_saved_variables(workdir):
        raise InputError(f"--workdir {workdir} holds saved variables (e.g. imported by "
                         "vae_jax.torch_port), not a training run; train in another --workdir")


def check_fits_in_memory(model: VAE, config: TrainConfig) -> None:
    """Raises InputError when the parameters, their gradients and Adam's two moments alone
    need more memory than the device has (a mistyped --z-dim, say)."""
    count = sum(math.prod(leaf.shape)
                for leaf in jax.tree.leaves(variable_shapes(model)["params"]))
    needed, available = 4 * 4 * count, platforms.memory_bytes()
    if available and needed > available:
        raise InputError(f"--z-dim {config.z_dim}: the model has {count:,} parameters, which "
                         f"with their gradients and Adam's state need {needed / 2**30:,.0f} "
                         f"GiB, more than the {available / 2**30:,.0f} GiB of memory here")


def clear_run_outputs(workdir: str) -> None:
    """Deletes what a training run wrote into `workdir` (for --fresh --overwrite)."""
    for name in RUN_OUTPUTS:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    for path in glob.glob(os.path.join(glob.escape(workdir), "*_epoch*.png")):
        os.remove(path)


def kl_schedule(config: TrainConfig, num_train_images: int) -> KLSchedule:
    """β over the run: `--kl-weight`, reached over the first `--kl-warmup-epochs` epochs."""
    steps_per_epoch = input_pipeline.num_batches(num_train_images, config.batch_size)
    return KLSchedule(config.kl_weight, config.kl_warmup_epochs * steps_per_epoch)


class EpochRunner:
    """Runs one epoch of training in the chosen mode: "steps" (a jitted step per batch, with
    the step hooks and a progress bar) or "scan" (one jitted `lax.scan` over the training
    set on the device). Returns (state, the per-image metrics summed over the epoch).
    `kl` is the run's schedule of the KL weight β."""

    def __init__(self, config: TrainConfig, images: np.ndarray, parallel: DataParallel,
                 step_hooks: tuple[hooks.StepHook, ...], progress: bool):
        self.config, self.images, self.mode = config, images, config.epoch_mode
        self.parallel, self.step_hooks, self.progress = parallel, step_hooks, progress
        self.kl = kl_schedule(config, len(images))
        options = dict(binarize=config.binarize == "dynamic", parallel=parallel, kl=self.kl)
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
    config = dataclasses.replace(config, epoch_mode=resolve_epoch_mode(config.epoch_mode))
    check_workdir(workdir)
    model = VAE(z_dim=config.z_dim, implementation=config.implementation)
    check_fits_in_memory(model, config)
    parallel = DataParallel.create(config.devices)
    train_images, _ = input_pipeline.load_split(
        config.dataset, config.train_split, config.data_dir, download=config.download)
    test_images, _ = input_pipeline.load_split(
        config.dataset, config.test_split, config.data_dir, download=config.download)
    parallel.check_batches(len(train_images), config.batch_size)
    keys = RunKeys.from_seed(config.seed)
    steps_per_epoch = input_pipeline.num_batches(len(train_images), config.batch_size)
    picture_key, prior_key = jax.random.split(keys.pictures)
    prior_z = jax.random.normal(prior_key, (NUM_SAMPLES, config.z_dim))
    main = is_main_process()  # the process that writes files and prints
    log = log if main else (lambda line: None)

    with exclusive(workdir, command_line()) if main else contextlib.nullcontext(), \
            checkpoints.RunCheckpoints(workdir, keep=config.keep) as run:
        if fresh and main:
            clear_run_outputs(workdir)
        barrier("vae_jax: the workdir is ready")
        state, epoch_sums, restored = run.restore_or_initialize(
            lambda: create_train_state(model, make_optimizer(config.learning_rate), keys.init,
                                       keys.train), config=config, sharding=parallel.replicated)
        state = parallel.replicate(state)
        first_epoch, first_batch = divmod(step_of(state), steps_per_epoch)
        first_epoch += 1
        if restored:
            log(f"resuming from the checkpoint at step {step_of(state)} (epoch {first_epoch}, "
                f"batch {first_batch}) in {run.directory}")
        if main:
            write_config_file(workdir, config.to_json())
        if first_epoch > config.epochs:
            log(f"nothing to do: the run in {workdir} has already trained {config.epochs} "
                "epochs")
            return state
        log(f"training on {parallel.describe()} ({config.epoch_mode} epochs): "
            f"{len(train_images)} train / {len(test_images)} test images of {config.dataset}, "
            f"batch {config.batch_size}")

        save = hooks.Checkpointer(run, steps_per_epoch)
        with EpochWriter(workdir, completed_epochs=first_epoch - 1, log=log,
                         enabled=main) as writer, \
                hooks.StopSignal(save, steps_per_epoch, run.directory) as stop:
            run_epoch = EpochRunner(config, train_images, parallel, progress=progress and main,
                                    step_hooks=(hooks.FiniteLoss(steps_per_epoch, run.directory),
                                                hooks.PeriodicCheckpoint(
                                                    config.checkpoint_every, steps_per_epoch,
                                                    save),
                                                stop))
            for epoch in range(first_epoch, config.epochs + 1):
                # Train.
                start = time.perf_counter()
                batches_done = first_batch if epoch == first_epoch else 0
                state, sums = run_epoch(state, epoch, jax.random.fold_in(keys.shuffle, epoch),
                                        first_batch=batches_done,
                                        sums=epoch_sums if batches_done else None)
                hooks.require_finite(sums["loss"], "the epoch's training loss", step_of(state),
                                     steps_per_epoch, run.directory)
                train_seconds = time.perf_counter() - start
                # Evaluate.
                test = evaluate.neg_elbo(model, state.variables, test_images,
                                         jax.random.fold_in(keys.eval, epoch),
                                         batch_size=config.batch_size,
                                         binarize_mode=config.binarize,
                                         parallel=parallel).averages()
                hooks.require_finite(test, "the test loss", step_of(state), steps_per_epoch,
                                     run.directory)
                trained = len(train_images) - batches_done * config.batch_size
                record = {"epoch": epoch, "step": step_of(state),
                          **{f"train_{name}": float(to_host(sums[name])) / len(train_images)
                             for name in METRIC_NAMES},
                          **{f"test_{name}": test[name] for name in METRIC_NAMES},
                          "kl_weight": float(run_epoch.kl.at(step_of(state) - 1)),
                          "images_per_sec": trained / train_seconds,
                          "seconds": time.perf_counter() - start,
                          "devices": parallel.device_count,
                          "processes": parallel.process_count}
                # Write, then checkpoint: a resumed run redoes an epoch whose checkpoint is
                # missing and drops its line, so metrics.jsonl always matches the checkpoints.
                writer.write(record, epoch_pictures(model, state.variables,
                                                    test_images[:NUM_RECONSTRUCTIONS],
                                                    picture_key, prior_z, parallel))
                save(state)
                stop.check(state, None)
    return state


# ---------------------------------------------------------------------------------------------
# Command line: `python train.py`, `python -m vae_jax.train`, `vae-jax-train`.


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(
        prog=cli.program_name("train.py"),
        description="Train the DeepLearning.AI course's convolutional VAE.")
    cli.add_platform_flag(parser)
    cli.add_config_flags(parser, TrainConfig)
    cli.add_distributed_flags(parser)
    parser.add_argument("--workdir", default="runs/vae",
                        help="where metrics, pictures and checkpoints go; running again on "
                             "the same workdir resumes the run (default: runs/vae)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over instead of resuming the run in --workdir "
                             "(with --overwrite when there is one to delete)")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --fresh: delete the earlier run's checkpoints and metrics")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")
    return parser


def check_fresh(workdir: str, fresh: bool, overwrite: bool) -> None:
    """--fresh deletes a run only with --overwrite."""
    if fresh and not overwrite and any(
            os.path.exists(os.path.join(workdir, name))
            for name in (CHECKPOINTS_DIR, METRICS_FILE)):
        raise InputError(f"--fresh: --workdir {workdir} holds a run; add --overwrite to delete "
                         "it and start over, or leave out --fresh to resume it")


def command(args: argparse.Namespace) -> None:
    check_fresh(args.workdir, args.fresh, args.overwrite)
    train_and_evaluate(cli.config_from_args(args, TrainConfig), args.workdir,
                       progress=args.progress, fresh=args.fresh)


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
