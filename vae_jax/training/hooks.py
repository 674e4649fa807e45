"""What runs after each training step: the finite check, periodic checkpoints, the stop
signal and the progress bar.

A hook is called as `hook(state, batch_metrics, epoch_sums)` after every step of an epoch
run step by step (`vae_jax.training.loop.run_epoch_steps`), in the order of the list it is in. An
epoch run as one `lax.scan` has no steps to hook into: the loop checks its sums with
`require_finite` and the stop signal at the epoch's end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable, Iterator, Protocol

import jax
import numpy as np

from vae_jax.checkpoints.run_checkpoints import RunCheckpoints
from vae_jax.runtime.errors import NonFiniteLossError, TrainingInterrupted
from vae_jax.runtime.mesh import any_process, host, to_host
from vae_jax.runtime.progress import tqdm
from vae_jax.training import resume
from vae_jax.training.train_state import TrainState, step_of

SaveFn = Callable[[TrainState, "dict | None"], None]  # e.g. a Checkpointer


class StepHook(Protocol):
    def __call__(self, state: TrainState, batch_metrics: dict, epoch_sums: dict) -> None:
        ...


def epoch_of_step(step: int, steps_per_epoch: int) -> int:
    """The epoch (counted from 1) that step `step` (counted from 1) belongs to."""
    return (max(step, 1) - 1) // steps_per_epoch + 1


def require_finite(tree, what: str, step: int, steps_per_epoch: int, where: str) -> None:
    """Raises NonFiniteLossError unless every number in `tree` is finite.

    `what` names the numbers ("the training loss"), `where` is the last good checkpoint's
    directory; the message says that nothing was saved.
    """
    leaves = jax.tree.leaves(host(tree))
    if all(bool(np.all(np.isfinite(leaf))) for leaf in leaves):
        return
    shown = f" ({float(leaves[0])})" if len(leaves) == 1 and np.size(leaves[0]) == 1 else ""
    kept = (f"the last good checkpoint in {where} stays" if _holds_checkpoints(where)
            else "there is no earlier checkpoint")
    raise NonFiniteLossError(
        f"{what}{shown} is not finite at step {step} (epoch "
        f"{epoch_of_step(step, steps_per_epoch)}); stopped without saving it ({kept})")


def _holds_checkpoints(directory: str) -> bool:
    """Whether a run's checkpoint directory holds a saved step."""
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


class FiniteLoss:
    """Stops the run when a step's loss is not finite."""

    def __init__(self, steps_per_epoch: int, checkpoint_dir: str):
        self.steps_per_epoch, self.checkpoint_dir = steps_per_epoch, checkpoint_dir

    def __call__(self, state: TrainState, batch_metrics: dict, epoch_sums: dict) -> None:
        require_finite(batch_metrics["loss"], "the training loss", step_of(state),
                       self.steps_per_epoch, self.checkpoint_dir)


class Checkpointer:
    """Saves the train state (`vae_jax.training.resume`): never parameters that are not
    finite, never a step twice.

    `checkpointer(state, epoch_sums)`; `epoch_sums` are the running sums of an unfinished
    epoch (None at an epoch's end).
    """

    def __init__(self, run: RunCheckpoints, steps_per_epoch: int):
        self.run, self.steps_per_epoch = run, steps_per_epoch

    def __call__(self, state: TrainState, epoch_sums: dict | None = None) -> None:
        step = step_of(state)
        require_finite(state.variables, "a parameter", step, self.steps_per_epoch,
                       self.run.directory)
        if step not in self.run.steps():
            resume.save_train_state(self.run, state, epoch_sums)


class PeriodicCheckpoint:
    """Saves a checkpoint inside an epoch where the run's orbax policy says so
    (`--checkpoint-every`, `vae_jax.training.loop.periodic_checkpoints`)."""

    def __init__(self, run: RunCheckpoints, save: SaveFn):
        self.run, self.save = run, save

    def __call__(self, state: TrainState, batch_metrics: dict, epoch_sums: dict) -> None:
        if self.run.should_save(step_of(state)):
            self.save(state, epoch_sums)


class StopSignal:
    """Turns SIGINT/SIGTERM into a checkpoint and `TrainingInterrupted`.

    Use as `with StopSignal(save, steps_per_epoch, directory) as stop:`; inside, the signals
    are recorded instead of killing the process (main thread only). As a hook it acts after
    the next step, except at an epoch's last step, where the epoch's evaluation and record
    come first and the loop calls `stop.check` after them.
    """

    def __init__(self, save: SaveFn, steps_per_epoch: int, checkpoint_dir: str):
        self.save, self.steps_per_epoch = save, steps_per_epoch
        self.checkpoint_dir = checkpoint_dir
        self.received: list[int] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "StopSignal":
        self._stack.enter_context(_recording_signals(self.received))
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def __call__(self, state: TrainState, batch_metrics: dict, epoch_sums: dict) -> None:
        if step_of(state) % self.steps_per_epoch:
            self.check(state, epoch_sums)

    def check(self, state: TrainState, epoch_sums: dict | None) -> None:
        """Saves and raises TrainingInterrupted when a signal has reached this process or
        any other of the run (a collective: every process calls it at the same steps, so
        all stop at the same step, with one checkpoint)."""
        if not any_process(bool(self.received)):
            return
        self.save(state, epoch_sums)
        signum = self.received[0] if self.received else signal.SIGTERM  # another's signal
        raise TrainingInterrupted(
            signum, f"stopped by {signal.Signals(signum).name} at step {step_of(state)}; "
                    f"checkpoint saved in {self.checkpoint_dir}, run the same command again "
                    "to resume")


@contextlib.contextmanager
def _recording_signals(received: list[int]) -> Iterator[None]:
    """Appends SIGINT/SIGTERM to `received` instead of dying (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class ProgressBar:
    """A tqdm bar over an epoch's images, showing the last batch's loss; a context manager."""

    def __init__(self, total: int, batch_size: int, *, first_batch: int = 0,
                 description: str = "", enabled: bool = True):
        self.total, self.batch_size = total, batch_size
        self.done = min(first_batch * batch_size, total)
        self.bar = tqdm(total=total, initial=self.done, desc=description, unit="img",
                        disable=not enabled, leave=False, dynamic_ncols=True)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc_info) -> None:
        self.bar.close()

    def __call__(self, state: TrainState, batch_metrics: dict, epoch_sums: dict) -> None:
        batch = min(self.batch_size, self.total - self.done)
        self.done += batch
        self.bar.update(batch)
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{float(to_host(batch_metrics['loss'])):.1f}")
