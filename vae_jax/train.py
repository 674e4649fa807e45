"""Training and evaluation: the train state, the jitted steps, and the epoch loop.

Every random choice comes from one seed: `jax.random.key(seed)` is split into the
parameter-init key, the training key carried (and split at every step) in the train
state, the shuffle key (folded with the epoch number) and the evaluation key (likewise).

Two ways to run an epoch, with the same result:
* "steps": a Python loop over batches gathered on the host, one jitted `train_step` each;
  a progress bar follows the steps.
* "scan": the whole training set on the device and the epoch as one jitted `lax.scan`
  (shuffling on the device, donated state, no host synchronisation inside the epoch).
`epoch_mode="auto"` picks "steps" on CPU and "scan" on GPU/TPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from vae_jax import checkpoints, grids, input_pipeline, losses
from vae_jax.binarize import binarize as binarize_images
from vae_jax.models import IMAGE_SIZE, VAE

EPOCH_MODES = ("auto", "steps", "scan")
BINARIZE_MODES = ("none", "dynamic")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A run's settings; the defaults are the course's recipe."""

    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 2e-3
    z_dim: int = 32
    seed: int = 0
    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = True
    train_split: str = "train"
    test_split: str = "test"
    implementation: str = "auto"  # convolution implementation, see layers.py
    epoch_mode: str = "auto"      # "steps", "scan" or "auto", see the module docstring
    binarize: str = "none"        # "dynamic": Bernoulli(pixel) images, redrawn every batch
    checkpoint_every: int = 0     # also checkpoint every N steps (0: at epoch ends only)
    keep: int = 3                 # checkpoints kept

    def model_config(self) -> dict[str, Any]:
        return {"z_dim": self.z_dim, "im_chan": 1}


class TrainState(train_state.TrainState):
    """params, opt_state and step (from Flax), plus BatchNorm statistics and the PRNG key."""

    batch_stats: Any
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class RunKeys:
    """The independent keys one seed gives a run."""

    init: jax.Array
    train: jax.Array
    shuffle: jax.Array
    eval: jax.Array
    pictures: jax.Array

    @classmethod
    def from_seed(cls, seed: int) -> "RunKeys":
        return cls(*jax.random.split(jax.random.key(seed), 5))


def make_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Adam with PyTorch's (and optax's) defaults: betas 0.9/0.999, eps 1e-8."""
    return optax.adam(learning_rate)


def create_train_state(model: VAE, optimizer: optax.GradientTransformation,
                       init_key: jax.Array, train_key: jax.Array) -> TrainState:
    """Initialises the model's variables and the optimizer's state."""
    param_key, noise_key = jax.random.split(init_key)
    dummy = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, model.im_chan), jnp.float32)
    variables = model.init(param_key, dummy, noise_key, train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             tx=optimizer,
                             batch_stats=variables["batch_stats"], key=train_key)


def train_step(state: TrainState, images: jax.Array, binarize: bool = False
               ) -> tuple[TrainState, dict]:
    """One Adam step on a batch (B, 28, 28, C); returns the new state and batch metrics.

    Metrics are the batch means (per image, before the update) of `loss`, `reconstruction`
    and `kl`. The state's key is split: one part samples z now, the other is kept. With
    `binarize`, a third part draws the batch's binary images (input and target).
    """
    if binarize:
        key, sample_key, binarize_key = jax.random.split(state.key, 3)
        images = binarize_images(binarize_key, images)
    else:
        key, sample_key = jax.random.split(state.key)

    def loss_fn(params):
        (logits, mean, stddev), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, images, sample_key,
            train=True, mutable=["batch_stats"])
        loss, metrics = losses.vae_loss(logits, images, mean, stddev)
        return loss, (metrics, updates["batch_stats"])

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats, key=key)
    return state, metrics


def eval_step(state: TrainState, images: jax.Array, key: jax.Array, binarize: bool = False
              ) -> dict:
    """Sums over a batch of the single-sample negative ELBO and its parts, in eval mode."""
    if binarize:
        key, binarize_key = jax.random.split(key)
        images = binarize_images(binarize_key, images)
    logits, mean, stddev = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, images, key, train=False)
    reconstruction = losses.reconstruction_loss(logits, images)
    kl = losses.kl_divergence(mean, stddev)
    return {"loss": (reconstruction + kl).sum(), "reconstruction": reconstruction.sum(),
            "kl": kl.sum()}


def make_train_step(max_traces: int = 2, binarize: bool = False) -> Callable:
    """`train_step` jitted with its state donated, compiled at most `max_traces` times.

    A run needs two compilations: the full batch and the last, smaller one.
    """
    def step(state, images):
        return train_step(state, images, binarize)

    return jax.jit(chex.assert_max_traces(step, n=max_traces), donate_argnums=0)


def make_eval_step(max_traces: int = 2, binarize: bool = False) -> Callable:
    def step(state, images, key):
        return eval_step(state, images, key, binarize)

    return jax.jit(chex.assert_max_traces(step, n=max_traces))


def make_train_epoch(batch_size: int, max_traces: int = 1, binarize: bool = False
                     ) -> Callable:
    """The whole epoch as one jitted function of (state, images on device, epoch key).

    Returns (state, sums) where sums are the per-image metrics summed over the epoch. Data
    order and keys are the same as in the step-by-step loop of `train_epoch_steps`.
    """

    def train_epoch(state, images, epoch_key):
        num_examples = images.shape[0]
        order = input_pipeline.epoch_permutation(epoch_key, num_examples)
        num_full = num_examples // batch_size

        def body(state, batch_indices):
            state, metrics = train_step(state, images[batch_indices], binarize)
            return state, metrics

        state, metrics = jax.lax.scan(
            body, state, order[:num_full * batch_size].reshape(num_full, batch_size))
        sums = jax.tree.map(lambda m: m.sum() * batch_size, metrics)
        if num_examples % batch_size:
            state, last = train_step(state, images[order[num_full * batch_size:]], binarize)
            rest = num_examples - num_full * batch_size
            sums = jax.tree.map(lambda s, m: s + m * rest, sums, last)
        return state, sums

    return jax.jit(chex.assert_max_traces(train_epoch, n=max_traces), donate_argnums=0)


def train_epoch_steps(step_fn: Callable, state: TrainState, images: np.ndarray,
                      epoch_key: jax.Array, batch_size: int, progress: bool = False,
                      description: str = "", first_batch: int = 0, sums: dict | None = None,
                      after_step: Callable[[TrainState, dict, dict], None] | None = None,
                      ) -> tuple[TrainState, dict]:
    """One epoch as a Python loop of jitted steps; returns (state, summed metrics).

    `first_batch` and `sums` continue an epoch that was interrupted after that many batches;
    `after_step(state, batch_metrics, sums)` runs after every step (checks, checkpoints).
    """
    order = np.asarray(input_pipeline.epoch_permutation(epoch_key, images.shape[0]))
    slices = input_pipeline.batch_slices(images.shape[0], batch_size)
    with tqdm(total=images.shape[0], initial=min(first_batch * batch_size, images.shape[0]),
              desc=description, unit="img", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for batch_slice in slices[first_batch:]:
            batch = images[order[batch_slice]]
            state, metrics = step_fn(state, batch)
            weighted = jax.tree.map(lambda m: m * batch.shape[0], metrics)
            sums = weighted if sums is None else jax.tree.map(jnp.add, sums, weighted)
            if after_step is not None:
                after_step(state, metrics, sums)
            bar.update(batch.shape[0])
            bar.set_postfix(loss=f"{float(metrics['loss']):.1f}")
    return state, sums


def evaluate(eval_fn: Callable, state: TrainState, images: np.ndarray, key: jax.Array,
             batch_size: int) -> dict[str, float]:
    """Means over `images` of the eval-mode single-sample negative ELBO and its parts."""
    sums = None
    for index, batch_slice in enumerate(input_pipeline.batch_slices(len(images), batch_size)):
        batch_sums = eval_fn(state, images[batch_slice], jax.random.fold_in(key, index))
        sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
    return {name: float(value) / len(images) for name, value in sums.items()}


def resolve_epoch_mode(epoch_mode: str) -> str:
    if epoch_mode not in EPOCH_MODES:
        raise ValueError(f"epoch_mode must be one of {EPOCH_MODES}, got {epoch_mode!r}")
    if epoch_mode == "auto":
        return "steps" if jax.default_backend() == "cpu" else "scan"
    return epoch_mode


class TrainingStopped(Exception):
    """Training stopped before the last epoch; `exit_code` is what the command line returns."""

    exit_code = 1


class NonFiniteLossError(TrainingStopped):
    """The loss (or the parameters) stopped being finite; nothing non-finite was saved."""


class TrainingInterrupted(TrainingStopped):
    """SIGINT or SIGTERM arrived; a checkpoint was saved first."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class ResumeMismatchError(ValueError):
    """The flags differ from those of the run being resumed, where they must not."""


# What a resumed run must share with the saved one for the result to be the same.
RESUME_MUST_MATCH = ("z_dim", "batch_size", "learning_rate", "seed", "dataset", "train_split",
                     "binarize")


def check_resumable(saved: dict, config: TrainConfig, directory: str) -> None:
    """Raises ResumeMismatchError naming the first flag that differs from the saved run."""
    for name in RESUME_MUST_MATCH:
        if name in saved and saved[name] != getattr(config, name):
            raise ResumeMismatchError(
                f"--{name.replace('_', '-')} {getattr(config, name)} differs from "
                f"{saved[name]} of the run saved in {directory}; pass the same value, or "
                f"--fresh --overwrite to start over")


@contextlib.contextmanager
def stop_signals():
    """Records SIGINT/SIGTERM in the yielded list instead of dying (main thread only)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _train_state_tree(state: TrainState, sums: dict | None) -> dict:
    """The part of the train state a checkpoint keeps besides the model variables."""
    zero = {name: jnp.zeros((), jnp.float32) for name in ("loss", "reconstruction", "kl")}
    return {"opt_state": state.opt_state, "step": state.step,
            "key": jax.random.key_data(state.key), "epoch_sums": sums or zero}


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype), tree)


def restore_train_state(run: checkpoints.RunCheckpoints, template: TrainState
                        ) -> tuple[TrainState, dict | None] | None:
    """The newest readable checkpoint as (state, the epoch's metric sums so far), or None."""
    variables = {"params": template.params, "batch_stats": template.batch_stats}
    restored = run.restore_newest(
        ("variables", "train_state"),
        targets={"variables": _abstract(variables),
                 "train_state": _abstract(_train_state_tree(template, None))})
    if restored is None:
        return None
    _, trees = restored
    saved = trees["train_state"]
    state = template.replace(
        params=trees["variables"]["params"], batch_stats=trees["variables"]["batch_stats"],
        opt_state=saved["opt_state"], step=saved["step"],
        key=jax.random.wrap_key_data(saved["key"]))
    return state, saved["epoch_sums"]


def _all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(leaf))) for leaf in jax.tree.leaves(jax.device_get(tree)))


def _save_checkpoint(run: checkpoints.RunCheckpoints, state: TrainState, sums: dict | None,
                     config: TrainConfig) -> None:
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    if not _all_finite(variables):
        raise NonFiniteLossError(
            f"the parameters are not finite at step {int(state.step)}; stopped without "
            f"saving them (the last good checkpoint in {run.directory} stays)")
    run.save(int(state.step), variables, _train_state_tree(state, sums),
             dataclasses.asdict(config))


def _read_metrics(path: str, completed_epochs: int) -> list[str]:
    """The lines of metrics.jsonl for the epochs a resumed run has already completed."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line for line in f if line.strip()
                and json.loads(line)["epoch"] <= completed_epochs]


def train_and_evaluate(config: TrainConfig, workdir: str, *, progress: bool = True,
                       log: Callable[[str], None] = print, fresh: bool = False) -> TrainState:
    """Trains for `config.epochs` epochs, resuming from the newest checkpoint in `workdir`.

    Writes per epoch a line of `metrics.jsonl`, `reconstructions_epoch{N}.png`,
    `samples_epoch{N}.png`, TensorBoard events in `tensorboard/` and a checkpoint (also every `config.checkpoint_every` steps and
    on SIGINT/SIGTERM); `vae_jax.load_variables(workdir)` reads the newest one. `fresh`
    deletes earlier checkpoints and metrics. Raises DatasetError and ResumeMismatchError
    before anything in `workdir` changes, and TrainingStopped subclasses when it stops early.
    """
    if config.binarize not in BINARIZE_MODES:
        raise ValueError(f"binarize must be one of {BINARIZE_MODES}, got {config.binarize!r}")
    resolve_epoch_mode(config.epoch_mode)  # a bad mode fails here, before any write
    train_images, _ = input_pipeline.load_split(
        config.dataset, config.train_split, config.data_dir, download=config.download)
    test_images, _ = input_pipeline.load_split(
        config.dataset, config.test_split, config.data_dir, download=config.download)
    run = checkpoints.RunCheckpoints(workdir, keep=config.keep)
    try:
        return _train(config, workdir, run, train_images, test_images, progress, log, fresh)
    finally:
        run.close()


def _train(config, workdir, run, train_images, test_images, progress, log, fresh):
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if not fresh:
        saved_config = run.read_config()
        if saved_config is not None:
            check_resumable(saved_config, config, workdir)
    elif os.path.isdir(run.directory):
        run.close()
        shutil.rmtree(run.directory)

    keys = RunKeys.from_seed(config.seed)
    model = VAE(z_dim=config.z_dim, implementation=config.implementation)
    state = create_train_state(model, make_optimizer(config.learning_rate), keys.init,
                               keys.train)
    steps_per_epoch = -(-len(train_images) // config.batch_size)
    restored = None if fresh else restore_train_state(run, state)
    epoch_sums = None
    if restored is not None:
        state, epoch_sums = restored
    step = int(state.step)
    first_epoch, first_batch = step // steps_per_epoch + 1, step % steps_per_epoch
    if restored is not None:
        log(f"resuming from the checkpoint at step {step} (epoch {first_epoch}, batch "
            f"{first_batch}) in {run.directory}")
    if first_batch == 0:
        epoch_sums = None
    os.makedirs(workdir, exist_ok=True)
    kept_lines = _read_metrics(metrics_path, first_epoch - 1)
    with open(metrics_path, "w") as f:
        f.writelines(kept_lines)
    checkpoints.save_config(workdir, config.model_config())

    binarize = config.binarize == "dynamic"
    epoch_mode = resolve_epoch_mode(config.epoch_mode)
    eval_fn = make_eval_step(binarize=binarize)
    step_fn = make_train_step(binarize=binarize)
    if epoch_mode == "scan":
        epoch_fn = make_train_epoch(config.batch_size, binarize=binarize)
        device_images = jax.device_put(train_images)
    picture_noise_key, prior_key = jax.random.split(keys.pictures)
    prior_z = jax.random.normal(prior_key, (64, config.z_dim))
    if first_epoch > config.epochs:
        log(f"nothing to do: the run in {workdir} has already trained {config.epochs} epochs")
        return state
    log(f"training on {jax.default_backend()} ({epoch_mode} epochs): {len(train_images)} "
        f"train / {len(test_images)} test images of {config.dataset}, batch {config.batch_size}")

    with stop_signals() as received, SummaryWriter(os.path.join(workdir, "tensorboard")) as writer:
        def stop_if_asked(state, sums):
            if received:
                if not run.steps() or run.steps()[-1] != int(state.step):
                    _save_checkpoint(run, state, sums, config)
                name = signal.Signals(received[0]).name
                raise TrainingInterrupted(
                    received[0], f"stopped by {name} at step {int(state.step)}; checkpoint "
                    f"saved in {run.directory}, run the same command again to resume")

        for epoch in range(first_epoch, config.epochs + 1):
            start = time.perf_counter()
            epoch_key = jax.random.fold_in(keys.shuffle, epoch)
            batches_before = first_batch if epoch == first_epoch else 0

            def after_step(state, metrics, sums):
                loss = float(metrics["loss"])
                if not np.isfinite(loss):
                    raise NonFiniteLossError(
                        f"the training loss is {loss} at step {int(state.step)} (epoch "
                        f"{epoch}); stopped without saving it (the last good checkpoint in "
                        f"{run.directory} stays)")
                step = int(state.step)
                if step % steps_per_epoch == 0:
                    return  # the epoch's end: evaluated and saved below
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    _save_checkpoint(run, state, sums, config)
                stop_if_asked(state, sums)

            if epoch_mode == "scan" and batches_before == 0:
                state, sums = epoch_fn(state, device_images, epoch_key)
                if not np.isfinite(float(sums["loss"])):
                    raise NonFiniteLossError(
                        f"the training loss is not finite in epoch {epoch} (steps up to "
                        f"{int(state.step)}); stopped without saving (the last good checkpoint "
                        f"in {run.directory} stays)")
            else:
                state, sums = train_epoch_steps(
                    step_fn, state, train_images, epoch_key, config.batch_size,
                    progress=progress, description=f"epoch {epoch}/{config.epochs}",
                    first_batch=batches_before, sums=epoch_sums if batches_before else None,
                    after_step=after_step)
            trained = len(train_images) - batches_before * config.batch_size
            train_metrics = {name: float(value) / len(train_images) for name, value in sums.items()}
            train_seconds = time.perf_counter() - start
            test_metrics = evaluate(eval_fn, state, test_images,
                                    jax.random.fold_in(keys.eval, epoch), config.batch_size)
            mosaics = write_pictures(state, test_images[:25], picture_noise_key, prior_z,
                                     workdir, epoch)
            record = {
                "epoch": epoch, "step": int(state.step),
                "train_loss": train_metrics["loss"],
                "train_reconstruction": train_metrics["reconstruction"],
                "train_kl": train_metrics["kl"],
                "test_loss": test_metrics["loss"],
                "test_reconstruction": test_metrics["reconstruction"],
                "test_kl": test_metrics["kl"],
                "images_per_sec": trained / train_seconds,
                "seconds": time.perf_counter() - start,
            }
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            log_to_tensorboard(writer, record, mosaics, epoch)
            # After the metrics line: a resumed run redoes an epoch whose checkpoint is missing
            # and drops that epoch's line, so the file always matches the checkpoints.
            _save_checkpoint(run, state, None, config)
            log(f"epoch {epoch:3d}  train loss {record['train_loss']:8.2f}  test loss "
                f"{record['test_loss']:8.2f} (rec {record['test_reconstruction']:.2f} + kl "
                f"{record['test_kl']:.2f})  {record['images_per_sec']:7.0f} img/s  "
                f"{record['seconds']:.1f} s")
            stop_if_asked(state, None)
    return state


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _reconstruct_and_sample(apply_fn, variables, images, key, prior_z):
    logits, _, _ = apply_fn(variables, images, key, train=False)
    sample_logits = apply_fn(variables, prior_z, train=False, method=VAE.decode)
    return jax.nn.sigmoid(logits), jax.nn.sigmoid(sample_logits)


def write_pictures(state: TrainState, images: np.ndarray, key: jax.Array, prior_z: jax.Array,
                   workdir: str, epoch: int) -> dict[str, np.ndarray]:
    """Writes the epoch's reconstruction grid and prior samples as PNG files.

    Returns the two mosaics (2-D arrays in [0, 1]) for TensorBoard.
    """
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    reconstructions, samples = jax.device_get(_reconstruct_and_sample(
        state.apply_fn, variables, images, key, prior_z))
    grids.save_reconstructions(
        os.path.join(workdir, f"reconstructions_epoch{epoch}.png"), images,
        reconstructions, title=f"epoch {epoch}")
    grids.save_samples(os.path.join(workdir, f"samples_epoch{epoch}.png"),
                       samples, title=f"samples from the prior, epoch {epoch}")
    return {"reconstructions": np.concatenate(
                [grids.tile(images, columns=5), grids.tile(reconstructions, columns=5)], axis=1),
            "samples": grids.tile(samples)}


def log_to_tensorboard(writer: SummaryWriter, record: dict, mosaics: dict, epoch: int) -> None:
    """The epoch's scalars (train/…, test/…, speed/…) and image grids."""
    for name, value in record.items():
        if name.startswith(("train_", "test_")):
            writer.add_scalar(name.replace("_", "/", 1), value, epoch)
    writer.add_scalar("speed/images_per_sec", record["images_per_sec"], epoch)
    writer.add_scalar("speed/epoch_seconds", record["seconds"], epoch)
    for name, mosaic in mosaics.items():
        writer.add_image(name, mosaic, epoch, dataformats="HW")
    writer.flush()
