"""What a run saves, and loading it back: checkpoints, variables, and a model to evaluate.

Everything is written with orbax (no pickle: loading runs no code from files). A training
run's directory holds:

* `checkpoints/<step>/` (an orbax `CheckpointManager`), each with three items: `variables`
  (`{"params", "batch_stats"}`), `train_state` (optimizer state, step, PRNG key data, the
  epoch's running metric sums) and `digests` (the SHA-256 of every array of the other two,
  `vae_jax.digests`). orbax writes a checkpoint under a temporary name and renames it when
  complete, so a crash during a save leaves no checkpoint that restores to something wrong;
  and a checkpoint damaged afterwards (a flipped bit, a truncated file) fails its digests
  or cannot be read: it gets a warning, is moved to `unreadable_checkpoints/`, and the one
  before it is used;
* `config.json`: the model configuration and the run's settings (`vae_jax.config`).

A directory made by `save_variables` (e.g. by `python -m vae_jax.torch_port`) holds
`variables/` (with `variables/digests.json`) and a `config.json` with the model
configuration only. `load_variables` and `load_model` read either kind.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from vae_jax import digests
from vae_jax.binarize import BINARIZE_MODES
from vae_jax.config import TrainConfig, is_positive_int, read_config_file, write_config_file
from vae_jax.errors import InputError
from vae_jax.losses import METRIC_NAMES
from vae_jax.parallel import is_main_process
from vae_jax.models import VAE, variable_shapes
from vae_jax.steps import TrainState, step_of
from vae_jax.workdir import (CHECKPOINTS_DIR, CONFIG_FILE, QUARANTINE_DIR, VARIABLES_DIR,
                             command_line, exclusive, holds_training_run, require_writable)

DIGESTS_ITEM = "digests"
DIGESTS_FILE = "digests.json"  # inside a `save_variables` directory


class CheckpointError(InputError):
    """A directory holds no readable variables or checkpoints, or ones that fit no VAE."""


class CheckpointWriteError(InputError):
    """A checkpoint could not be written (a full disk, say); the earlier ones are intact."""


def write_failure(error: Exception) -> str:
    """Why a write failed, in a few words: a full disk or a permission named plainly."""
    text = " ".join(str(error).split())
    if getattr(error, "errno", None) == 28 or "No space left on device" in text:
        return "the disk is full (No space left on device)"
    if getattr(error, "errno", None) == 13 or "Permission denied" in text:
        return "permission denied"
    return f"{type(error).__name__}: {text[:200]}"


def _variables_tree(variables) -> dict:
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _abstract(tree, sharding=None):
    """The shapes and dtypes of `tree`'s arrays (and where to put them, `sharding`)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype,
                                                       sharding=sharding), tree)


def save_variables(workdir: str, variables: dict, config: dict | None = None) -> str:
    """Writes `{"params", "batch_stats"}` (and the model `config`) into `workdir`.

    An existing `variables/` is replaced only once the new one is complete. Returns the path.
    Refuses (CheckpointError) a `workdir` that holds a training run, whose config.json this
    would overwrite, and one that another process is writing (`vae_jax.workdir`).
    """
    check_variables_target(workdir)
    workdir = os.path.abspath(workdir)
    with exclusive(workdir, command_line()):
        return _save_variables(workdir, variables, config)


def check_variables_target(workdir: str) -> None:
    """Raises InputError unless variables can be saved into `workdir`: it must be writable
    and must not hold a training run (whose config.json they would overwrite)."""
    require_writable(workdir, (VARIABLES_DIR, CONFIG_FILE))
    if holds_training_run(workdir, read_config_file(workdir)):
        raise CheckpointError(f"--workdir {workdir} holds a training run; saving variables "
                              "there would overwrite its config.json: choose another directory")


def _save_variables(workdir: str, variables: dict, config: dict | None) -> str:
    _quiet_orbax()
    target = os.path.join(workdir, VARIABLES_DIR)
    staging = target + ".saving"
    shutil.rmtree(staging, ignore_errors=True)
    tree = jax.device_get(_variables_tree(variables))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(staging, tree)
    with open(os.path.join(staging, DIGESTS_FILE), "w") as file:
        json.dump(digests.tree_digests(tree), file)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    if config is not None:
        write_config_file(workdir, config)
    return target


def load_variables(workdir: str) -> dict:
    """`{"params": ..., "batch_stats": ...}` (numpy arrays) of the newest checkpoint in
    `workdir`, or of the variables saved there by `save_variables`."""
    workdir = os.path.abspath(workdir)
    if os.path.isdir(os.path.join(workdir, CHECKPOINTS_DIR)):
        with RunCheckpoints(workdir) as run:
            steps = run.steps()
            restored = run.restore_newest(("variables",), quarantine=False)
        if restored is not None:
            return jax.tree.map(np.asarray, _variables_tree(restored[1]["variables"]))
        if steps:
            damaged = "the only one is" if len(steps) == 1 else f"all {len(steps)} are"
            raise CheckpointError(f"no readable checkpoint in {run.directory}: {damaged} "
                                  "damaged (see the warnings above)")
    path = os.path.join(workdir, VARIABLES_DIR)
    if not os.path.isdir(path):
        raise CheckpointError(f"no saved variables in {workdir} (expected "
                              f"{os.path.join(workdir, CHECKPOINTS_DIR)} or {path})")
    _quiet_orbax()
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore(path)
        digests_path = os.path.join(path, DIGESTS_FILE)
        if not os.path.exists(digests_path):
            raise digests.MissingDigests(f"its digest record {DIGESTS_FILE} is missing")
        with open(digests_path) as file:
            digests.verify(tree, json.load(file), "variable")
        digests.require_finite(tree, "variable")
    except Exception as error:  # orbax raises many types for damaged files
        raise CheckpointError(f"cannot read variables in {path}: {type(error).__name__}: "
                              f"{error_line(error)}") from error
    return jax.tree.map(np.asarray, _variables_tree(tree))


def error_line(error: Exception) -> str:
    """An error's message as one readable line: the first line, without the Python object
    reprs and source locations that tensorstore appends (at most 200 characters)."""
    text = (str(error).strip().splitlines() or [""])[0]
    text = re.split(r"\.?\s*(?:<bound method|<function|\[source locations=|"
                    r"\[tensorstore_spec=|See full TensorStore details)", text)[0]
    return text.rstrip(" ;:,[(")[:200] or type(error).__name__


def read_run_config(workdir: str) -> dict[str, Any]:
    """The configuration saved in `workdir` ({} when there is none).

    Runs saved before config.json held the run's settings kept them in each checkpoint;
    for those the newest checkpoint's settings fill in what config.json lacks.
    """
    config = read_config_file(workdir)
    if "seed" not in config and os.path.isdir(os.path.join(workdir, CHECKPOINTS_DIR)):
        with RunCheckpoints(workdir) as run:
            config = {**run.legacy_config(), **config}
    return config


def training_binarize(workdir: str) -> str | None:
    """The `binarize` setting the run in `workdir` was trained with, when it records one
    (None otherwise, e.g. for variables saved by `save_variables`)."""
    try:
        mode = read_run_config(workdir).get("binarize")
    except (OSError, ValueError):  # an unreadable config only loses the default
        return None
    return mode if mode in BINARIZE_MODES else None


def load_model(workdir: str) -> tuple[VAE, dict, dict]:
    """(model, variables, config) of the run or saved variables in `workdir`.

    Raises CheckpointError (one line) when the directory or its variables are missing,
    unreadable, or do not fit a VAE with the saved configuration.
    """
    if not os.path.isdir(workdir):
        raise CheckpointError(f"--workdir {workdir} is not a directory")
    variables = load_variables(workdir)
    config = read_run_config(workdir)
    if "z_dim" not in config:  # e.g. variables saved without config.json: read it off the kernel
        try:
            config["z_dim"] = int(variables["params"]["decoder"]["deconv1"]["kernel"].shape[2])
        except (KeyError, IndexError, AttributeError):
            raise CheckpointError(f"the variables in {workdir} are not the course VAE's "
                                  f"and there is no config.json") from None
    config.setdefault("im_chan", 1)
    for key in ("z_dim", "im_chan"):
        if not is_positive_int(config[key]):
            raise CheckpointError(f"{os.path.join(workdir, CONFIG_FILE)} is damaged: {key} "
                                  f"must be a positive integer, got {config[key]!r}")
    model = VAE(z_dim=config["z_dim"], im_chan=config["im_chan"])
    shapes = lambda tree: jax.tree.map(lambda x: tuple(np.shape(x)), tree)  # noqa: E731
    if shapes(variable_shapes(model)) != shapes(variables):
        raise CheckpointError(f"the variables in {workdir} do not fit a VAE with z_dim="
                              f"{model.z_dim}, im_chan={model.im_chan} (config.json)")
    return model, variables, config


class RunCheckpoints:
    """The checkpoints of one training run, in `workdir/checkpoints`, newest `keep` kept.

    A context manager: `with RunCheckpoints(workdir) as run: ...` closes orbax's manager.
    """

    def __init__(self, workdir: str, keep: int = 3):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, CHECKPOINTS_DIR)
        self.keep = keep
        self._manager = None

    def __enter__(self) -> "RunCheckpoints":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _open(self) -> ocp.CheckpointManager:
        _quiet_orbax()
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.keep, create=True, enable_async_checkpointing=False)
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first (none when there is no directory)."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(self._open().all_steps())

    def save(self, step: int, variables: dict, train_state: dict) -> None:
        """Saves a checkpoint at `step`, with the digests of its arrays (which are fetched
        from the device first)."""
        # orbax takes the arrays where they are: with many processes, each writes its part.
        trees = {"variables": _variables_tree(variables), "train_state": train_state}
        try:
            self._open().save(step, args=ocp.args.Composite(
                **{item: ocp.args.StandardSave(tree) for item, tree in trees.items()},
                **{DIGESTS_ITEM: ocp.args.JsonSave(
                    {item: digests.tree_digests(tree) for item, tree in trees.items()})}),
                force=True)
        except Exception as error:  # orbax raises many types for a failed write
            try:
                self._open().wait_until_finished()  # its threads, before the cleanup
            except Exception:  # noqa: BLE001 - the same failure again
                pass
            self.close()
            self._remove_partial(step)
            kept = [saved for saved in self.steps() if saved != step]
            raise CheckpointWriteError(
                f"cannot save the checkpoint of step {step} in {self.directory}: "
                f"{write_failure(error)}; "
                + (f"the last good checkpoint (step {kept[-1]}) stays" if kept
                   else "there is no earlier checkpoint")) from error

    def _remove_partial(self, step: int) -> None:
        """Deletes what a failed save of `step` left behind. Once in a full test suite a
        half-written directory survived one pass (a file still arriving while it was being
        removed, it seems), so this looks again until none is left, for up to a second."""
        pattern = os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")
        deadline = time.monotonic() + 1.0
        while partials := glob.glob(pattern):
            for partial in partials:
                shutil.rmtree(partial, ignore_errors=True)
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def save_train_state(self, state: TrainState, epoch_sums: dict | None) -> None:
        """Saves the whole train state and the running sums of an unfinished epoch."""
        self.save(step_of(state), state.variables, _train_state_tree(state, epoch_sums))

    def restore_or_initialize(self, initialize: Callable[[], TrainState], *,
                              config: TrainConfig | None = None, sharding=None
                              ) -> tuple[TrainState, dict | None, bool]:
        """(state, the epoch's metric sums so far, restored?): the newest readable checkpoint,
        else `initialize()` (whose result also gives the shapes to restore into).

        When there is a run to resume, `config` must agree with its saved settings
        (`TrainConfig.check_resumable`). A restored state's arrays are placed with
        `sharding` (e.g. replicated on the run's mesh, however many devices wrote them).
        """
        if config is not None and self.steps():
            config.check_resumable(read_run_config(self.workdir), self.workdir)
        state = initialize()
        restored = self.restore_newest(
            ("variables", "train_state"),
            targets={"variables": _abstract(state.variables, sharding),
                     "train_state": _abstract(_train_state_tree(state, None), sharding)})
        if restored is None:
            return state, None, False
        _, trees = restored
        saved = trees["train_state"]
        state = state.replace(
            params=trees["variables"]["params"], batch_stats=trees["variables"]["batch_stats"],
            opt_state=saved["opt_state"], step=saved["step"],
            key=jax.random.wrap_key_data(saved["key"]))
        return state, saved["epoch_sums"], True

    def restore_newest(self, items=("variables", "train_state"), targets=None,
                       quarantine: bool = True) -> tuple[int, dict] | None:
        """(step, {item: tree}) of the newest readable checkpoint, or None when there is none.

        An unreadable checkpoint gets a warning naming it, and the one before it is tried;
        with `quarantine` it is also moved to `workdir/unreadable_checkpoints/` (kept, not
        deleted; by process 0 alone), so that training can save new checkpoints past it.
        `targets` maps item names to abstract trees (e.g. from `jax.eval_shape`) to restore
        into; an item without one goes onto this process's first device.
        """
        targets = targets or {}
        for step in reversed(self.steps()):
            args = ({DIGESTS_ITEM: ocp.args.JsonRestore()}
                    if self._has_item(step, DIGESTS_ITEM) else {})
            try:
                for item in items:
                    args[item] = ocp.args.JsonRestore() if item == "config" else (
                        ocp.args.StandardRestore(targets.get(item) or self._local_target(
                            step, item)))
            except Exception as error:  # noqa: BLE001 - unreadable metadata
                self._warn_unreadable(step, error, quarantine)
                continue
            try:
                restored = self._open().restore(step, args=ocp.args.Composite(**args))
                self._verify(step, restored, items)
            except Exception as error:  # orbax raises many types for damaged files
                self._warn_unreadable(step, error, quarantine)
                continue
            return step, {item: restored[item] for item in items}
        return None

    def _verify(self, step: int, restored, items) -> None:
        """Raises unless the restored arrays are the ones saved: each matches its digest
        and is finite. Only checkpoints of the format before digests existed (those with a
        `config` item) may come without a digest record; in any other, a missing record is
        damage (an interrupted copy, a backup that skipped a small folder)."""
        if DIGESTS_ITEM not in restored and not self._has_item(step, "config"):
            raise digests.MissingDigests("its digest record is missing")
        for item in items:
            if item == "config":
                continue
            if DIGESTS_ITEM in restored:
                digests.verify(restored[item], restored[DIGESTS_ITEM][item], f"{item} array")
            digests.require_finite(restored[item], f"{item} array")

    def _local_target(self, step: int, item: str):
        """The shapes of an item's arrays, to restore onto this process's first device
        (whatever devices wrote them), from the checkpoint's own metadata."""
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.metadata(
                os.path.join(self.directory, str(step), item)).item_metadata
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                              sharding=device), tree)

    def _has_item(self, step: int, item: str) -> bool:
        return os.path.isdir(os.path.join(self.directory, str(step), item))

    def legacy_config(self) -> dict:
        """The settings that checkpoints written before config.json held them carry in a
        `config` item: the newest such checkpoint's, else {}."""
        for step in reversed(self.steps()):
            if self._has_item(step, "config"):
                restored = self.restore_newest(("config",), quarantine=False)
                return {} if restored is None else dict(restored[1]["config"])
        return {}

    def _warn_unreadable(self, step: int, error: Exception, quarantine: bool) -> None:
        source = os.path.join(self.directory, str(step))
        moved = ""
        if quarantine and is_main_process():
            target = _unused_path(os.path.join(self.workdir, QUARANTINE_DIR, str(step)))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(source, target)
            moved = f"; moved to {target}"
        self.close()  # orbax caches the list of steps
        if not is_main_process():
            return
        warnings.warn(f"checkpoint {source} is unreadable ({type(error).__name__}: "
                      f"{error_line(error)}){moved}; trying the one before it", stacklevel=3)

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def _train_state_tree(state: TrainState, epoch_sums: dict | None) -> dict:
    """The part of the train state a checkpoint keeps besides the model variables."""
    # Placed like the step (replicated on the run's mesh), as orbax wants with many processes.
    zero = {name: jnp.zeros_like(state.step, dtype=jnp.float32) for name in METRIC_NAMES}
    return {"opt_state": state.opt_state, "step": state.step,
            "key": jax.random.key_data(state.key), "epoch_sums": epoch_sums or zero}


def _unused_path(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ...: the first that does not exist (so a step
    quarantined twice keeps both copies)."""
    candidate, number = path, 1
    while os.path.exists(candidate):
        number += 1
        candidate = f"{path}-{number}"
    return candidate


def _quiet_orbax() -> None:
    """Keeps orbax's own reports of a failed save or restore off the screen, for good.

    vae-jax reports every failed save or restore itself, in one line (a checkpoint write
    error, or a warning that names an unreadable checkpoint and the fallback). orbax would
    bury that line: its threads log each failure again with a traceback (through absl's
    logger), and when a restore fails, tensorstore's reads still in flight finish after
    orbax has closed their asyncio event loop and each reports `RuntimeError: Event loop is
    closed` through `sys.unraisablehook`, a dozen tracebacks in all, some after the restore
    has returned. This drops exactly those: the absl log records that orbax's own modules
    emit at warning level or above, and the unraisable errors of orbax's abandoned reads
    (the closed event loop's, and its coroutines' own). Everything else passes.
    """
    global _orbax_quieted
    if _orbax_quieted:
        return
    _orbax_quieted = True
    logging.getLogger("absl").addFilter(
        lambda record: not (record.levelno >= logging.WARNING and _is_orbax(record.pathname)))
    previous = sys.unraisablehook

    def hook(unraisable):
        error = unraisable.exc_value
        closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        code = getattr(unraisable.object, "cr_code", None)  # an abandoned orbax coroutine
        abandoned_read = code is not None and _is_orbax(code.co_filename)
        if not (closed_loop or abandoned_read):
            previous(unraisable)

    sys.unraisablehook = hook


_orbax_quieted = False


def _is_orbax(path: str) -> bool:
    return f"{os.sep}orbax{os.sep}" in path
