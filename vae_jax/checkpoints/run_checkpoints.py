"""A training run's checkpoints: orbax's `CheckpointManager` in `workdir/checkpoints/`.

Each checkpoint `checkpoints/<step>/` holds three items: `variables` (`{"params",
"batch_stats"}`), `train_state` (what `vae_jax.training.resume` keeps of the train state)
and `digests` (the SHA-256 of every array of the other two, `vae_jax.checkpoints.digests`).

orbax writes a checkpoint under a temporary name and renames it when complete, so a crash
during a save leaves no checkpoint that restores to something wrong, and it removes such
leftovers before its next save (`cleanup_tmp_directories`). When to save inside an epoch is
orbax's decision too (`should_save_fn`, asked through `RunCheckpoints.should_save`). A
checkpoint damaged afterwards (a flipped bit, a truncated file) fails its digests or cannot
be read: it gets a warning, is set aside (`vae_jax.checkpoints.quarantine`), and the one
before it is used.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import time
import warnings
from typing import Callable

import jax
import orbax.checkpoint as ocp

from vae_jax.checkpoints import digests, quarantine
from vae_jax.checkpoints.orbax_logs import quiet_orbax
from vae_jax.checkpoints.workdir import CHECKPOINTS_DIR
from vae_jax.runtime.distributed import is_main_process
from vae_jax.runtime.errors import InputError

DIGESTS_ITEM = "digests"
ShouldSave = Callable[[int, "int | None"], bool]  # (step, last saved step) -> save now?


class CheckpointError(InputError):
    """A directory holds no readable variables or checkpoints, or ones that fit no VAE."""


class CheckpointWriteError(InputError):
    """A checkpoint could not be written (a full disk, say); the earlier ones are intact."""


def variables_tree(variables) -> dict:
    """`{"params", "batch_stats"}` of a model's variables (empty statistics if it has none)."""
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


class RunCheckpoints:
    """The checkpoints of one training run, in `workdir/checkpoints`, newest `keep` kept.

    `should_save(step, last_saved_step)` decides, for `RunCheckpoints.should_save`, which
    steps inside an epoch get a checkpoint. A context manager: `with RunCheckpoints(workdir)
    as run: ...` closes orbax's manager.
    """

    def __init__(self, workdir: str, keep: int = 3, should_save: ShouldSave | None = None):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, CHECKPOINTS_DIR)
        self.keep, self._should_save = keep, should_save
        self._manager = None

    def __enter__(self) -> "RunCheckpoints":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _open(self) -> ocp.CheckpointManager:
        quiet_orbax()
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.keep, create=True, enable_async_checkpointing=False,
                cleanup_tmp_directories=True,
                should_save_fn=self._should_save or (lambda step, last: False))
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first (none when there is no directory)."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(self._open().all_steps())

    def should_save(self, step: int) -> bool:
        """Whether `step` gets a checkpoint inside an epoch: orbax's decision, from the
        `should_save` policy given (none: never) and the steps already saved."""
        return self._should_save is not None and self._open().should_save(step)

    def save(self, step: int, variables: dict, train_state: dict) -> None:
        """Saves a checkpoint at `step`, with the digests of its arrays (which are fetched
        from the device first). Raises CheckpointWriteError, with the earlier checkpoints
        intact and nothing of this one left, when it cannot be written."""
        # orbax takes the arrays where they are: with many processes, each writes its part.
        trees = {"variables": variables_tree(variables), "train_state": train_state}
        try:
            self._open().save(step, args=ocp.args.Composite(
                **{item: ocp.args.StandardSave(tree) for item, tree in trees.items()},
                **{DIGESTS_ITEM: ocp.args.JsonSave(
                    {item: digests.tree_digests(tree) for item, tree in trees.items()})}),
                force=True)
        except Exception as error:  # orbax raises many types for a failed write
            self._abandon(step)
            kept = [saved for saved in self.steps() if saved != step]
            raise CheckpointWriteError(
                f"cannot save the checkpoint of step {step} in {self.directory}: "
                f"{write_failure(error)}; "
                + (f"the last good checkpoint (step {kept[-1]}) stays" if kept
                   else "there is no earlier checkpoint")) from error

    def _abandon(self, step: int) -> None:
        """After a failed save: lets orbax's threads finish, closes the manager, and deletes
        what the save wrote at once (a full disk gets its space back now, not at the next
        save). Once in a full test suite a half-written directory survived one pass (a file
        still arriving while it was being removed, it seems), so this looks again until none
        is left, for up to a second."""
        try:
            self._open().wait_until_finished()
        except Exception:  # noqa: BLE001 - the same failure again
            pass
        self.close()
        pattern = os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")
        deadline = time.monotonic() + 1.0
        while (partials := glob.glob(pattern)) and time.monotonic() <= deadline:
            for partial in partials:
                shutil.rmtree(partial, ignore_errors=True)
            time.sleep(0.05)

    def restore_newest(self, items=("variables", "train_state"), targets=None,
                       set_aside: bool = True) -> tuple[int, dict] | None:
        """(step, {item: tree}) of the newest readable checkpoint, or None when there is none.

        An unreadable checkpoint gets a warning naming it, and the one before it is tried;
        with `set_aside` it is also moved to `workdir/unreadable_checkpoints/` (kept, not
        deleted; by process 0 alone), so that training can save new checkpoints past it.
        `targets` maps item names to abstract trees (e.g. from `jax.eval_shape`) to restore
        into; an item without one goes onto this process's first device.
        """
        for step in reversed(self.steps()):
            try:
                return step, self._restore(step, items, targets or {})
            except Exception as error:  # orbax raises many types for damaged files
                self._warn_unreadable(step, error, set_aside)
        return None

    def _restore(self, step: int, items, targets: dict) -> dict:
        """{item: tree} of the checkpoint at `step`, checked against its digests; raises
        when it cannot be read, its digest record is missing, or an array is not the one
        saved or not finite."""
        args = {item: ocp.args.StandardRestore(targets.get(item) or self._local_target(step,
                                                                                       item))
                for item in items}
        if os.path.isdir(os.path.join(self.directory, str(step), DIGESTS_ITEM)):
            args[DIGESTS_ITEM] = ocp.args.JsonRestore()
        restored = self._open().restore(step, args=ocp.args.Composite(**args))
        if DIGESTS_ITEM not in restored:  # an interrupted copy, a backup that skipped it
            raise digests.MissingDigests("its digest record is missing")
        for item in items:
            digests.verify(restored[item], restored[DIGESTS_ITEM][item], f"{item} array")
            digests.require_finite(restored[item], f"{item} array")
        return {item: restored[item] for item in items}

    def _local_target(self, step: int, item: str):
        """The shapes of an item's arrays, to restore onto this process's first device
        (whatever devices wrote them), from the checkpoint's own metadata."""
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.metadata(
                os.path.join(self.directory, str(step), item)).item_metadata
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                              sharding=device), tree)

    def _warn_unreadable(self, step: int, error: Exception, set_aside: bool) -> None:
        source = os.path.join(self.directory, str(step))
        moved = ""
        if set_aside and is_main_process():
            moved = f"; moved to {quarantine.set_aside(source, self.workdir)}"
        self.close()  # orbax caches the list of steps
        if is_main_process():
            warnings.warn(f"checkpoint {source} is unreadable ({type(error).__name__}: "
                          f"{error_line(error)}){moved}; trying the one before it",
                          stacklevel=3)


def write_failure(error: Exception) -> str:
    """Why a write failed, in a few words: a full disk or a permission named plainly."""
    text = " ".join(str(error).split())
    if getattr(error, "errno", None) == 28 or "No space left on device" in text:
        return "the disk is full (No space left on device)"
    if getattr(error, "errno", None) == 13 or "Permission denied" in text:
        return "permission denied"
    if getattr(error, "errno", None) == 27 or "File too large" in text:
        return "a file would be larger than this system allows (File too large)"
    return f"{type(error).__name__}: {text[:200]}"


def error_line(error: Exception) -> str:
    """An error's message as one readable line: the first line, without the Python object
    reprs and source locations that tensorstore appends (at most 200 characters)."""
    text = (str(error).strip().splitlines() or [""])[0]
    text = re.split(r"\.?\s*(?:<bound method|<function|\[source locations=|"
                    r"\[tensorstore_spec=|See full TensorStore details)", text)[0]
    return text.rstrip(" ;:,[(")[:200] or type(error).__name__
