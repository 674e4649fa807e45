"""What a run's settings must fit before anything is written: JAX's int32 step counter and
indices, and the memory of its largest step.

Pure functions of the settings, the epoch's length and the device's memory; `RunSetup`
calls `check_run_fits` once the data is loaded, before the workdir is touched. Each refusal
is one line that names the flag and a value that fits.
"""

from __future__ import annotations

from vae_jax.runtime.errors import INT32_MAX, InputError
from vae_jax.training.config import TrainConfig

FLOAT_BYTES = 4
# Each activation of a decoded image is kept about four times in a training step: the layer's
# output, its normalised and activated copies for the backward pass, and its gradient.
COPIES_PER_ACTIVATION = 4


def decoded_image_floats(hidden_dim: int, im_chan: int = 1) -> int:
    """The decoder's activations for one image: 3x3x(16h), 6x6x(8h), 13x13x(4h) and
    28x28xC floats, for the encoder width h (`VAE.hidden_dim`; the decoder's is 4h)."""
    width = 4 * hidden_dim
    return 3 * 3 * 4 * width + 6 * 6 * 2 * width + 13 * 13 * width + 28 * 28 * im_chan


def step_bytes(config: TrainConfig, batch_size: int) -> int:
    """About what the largest training step holds: K x B decoded images' activations and
    their gradients (K = 1 for the ELBO)."""
    per_image = decoded_image_floats(config.hidden_dim) * COPIES_PER_ACTIVATION * FLOAT_BYTES
    return config.objective_samples * batch_size * per_image


def check_run_fits(config: TrainConfig, steps_per_epoch: int, memory_bytes: int | None,
                   devices: int = 1) -> None:
    """Raises InputError (one line, naming the flag and a value that fits) when a schedule or
    the run is longer than the int32 step counter holds, or the largest step needs more than
    one device's `memory_bytes` (None: unknown, not checked) with the batch split over
    `devices`."""
    epochs_that_fit = INT32_MAX // steps_per_epoch
    for flag, epochs in (("--epochs", config.epochs),
                         ("--lr-warmup-epochs", config.lr_warmup_epochs),
                         ("--kl-warmup-epochs", config.kl_warmup_epochs),
                         ("--lr-decay-epochs", config.lr_decay_end())):
        if epochs > epochs_that_fit:
            raise InputError(f"{flag} {epochs}: {epochs:,} epochs of {steps_per_epoch} steps "
                             f"are more steps than JAX's int32 step counter holds; at most "
                             f"{epochs_that_fit:,} epochs")
    samples, batch = config.objective_samples, config.batch_size
    pixels = 28 * 28
    device_batch = -(-batch // devices)
    per_image = step_bytes(config, device_batch) // (samples * device_batch)
    if samples * batch * pixels > INT32_MAX:
        fit = INT32_MAX // (batch * pixels)
        if memory_bytes:
            fit = min(fit, memory_bytes // (per_image * device_batch))
        raise InputError(f"--objective-samples {samples}: {samples:,} samples of {batch} "
                         f"images decode to more pixels than JAX's int32 indices reach; at "
                         f"most {max(fit, 1):,} at --batch-size {batch}")
    needed = step_bytes(config, device_batch)
    if memory_bytes and needed > memory_bytes:
        what = (f"--batch-size {batch}" if config.objective == "elbo"
                else f"--objective-samples {samples} with --batch-size {batch}")
        fit_samples = memory_bytes // (per_image * device_batch)
        advice = (f"--objective-samples {fit_samples} fits at --batch-size {batch}"
                  if config.objective != "elbo" and fit_samples >= 1 else
                  f"--batch-size {devices * max(1, memory_bytes // (per_image * samples))} "
                  f"fits")
        on = f" on each of {devices} devices" if devices > 1 else ""
        raise InputError(f"{what}: a step decodes {samples * device_batch:,} images at "
                         f"once{on}, about "
                         f"{needed / 2**30:,.1f} GiB with their gradients, more than the "
                         f"{memory_bytes / 2**30:,.1f} GiB of memory here; {advice}")
