"""What a run saves, and loading it back: checkpoints, variables, and a model to evaluate.

Everything is written with orbax (no pickle: loading runs no code from files). A training
run's directory holds:

* `checkpoints/<step>/` (an orbax `CheckpointManager`), each with two items: `variables`
  (`{"params", "batch_stats"}`) and `train_state` (optimizer state, step, PRNG key data,
  the epoch's running metric sums). orbax writes a checkpoint under a temporary name and
  renames it when complete, so a crash during a save leaves no checkpoint that restores to
  something wrong;
* `config.json`: the model configuration and the run's settings (`vae_jax.config`).

A directory made by `save_variables` (e.g. by `python -m vae_jax.torch_port`) holds
`variables/` and a `config.json` with the model configuration only. `load_variables` and
`load_model` read either kind.
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from vae_jax.binarize import BINARIZE_MODES
from vae_jax.config import TrainConfig, read_config_file, write_config_file
from vae_jax.errors import InputError
from vae_jax.losses import METRIC_NAMES
from vae_jax.models import VAE, variable_shapes
from vae_jax.steps import TrainState

CHECKPOINTS_DIR = "checkpoints"
VARIABLES_DIR = "variables"
QUARANTINE_DIR = "unreadable_checkpoints"


class CheckpointError(InputError):
    """A directory holds no readable variables or checkpoints, or ones that fit no VAE."""


def _variables_tree(variables) -> dict:
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype), tree)


def save_variables(workdir: str, variables: dict, config: dict | None = None) -> str:
    """Writes `{"params", "batch_stats"}` (and the model `config`) into `workdir`.

    An existing `variables/` is replaced only once the new one is complete. Returns the path.
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    target = os.path.join(workdir, VARIABLES_DIR)
    staging = target + ".saving"
    shutil.rmtree(staging, ignore_errors=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(staging, jax.device_get(_variables_tree(variables)))
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
            restored = run.restore_newest(("variables",), quarantine=False)
        if restored is not None:
            return jax.tree.map(np.asarray, _variables_tree(restored[1]["variables"]))
    path = os.path.join(workdir, VARIABLES_DIR)
    if not os.path.isdir(path):
        raise CheckpointError(f"no saved variables in {workdir} (expected "
                              f"{os.path.join(workdir, CHECKPOINTS_DIR)} or {path})")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore(path)
    except Exception as error:  # orbax raises many types for damaged files
        raise CheckpointError(f"cannot read variables in {path}: {error}") from error
    return jax.tree.map(np.asarray, _variables_tree(tree))


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
    model = VAE(z_dim=int(config["z_dim"]), im_chan=int(config["im_chan"]))
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

    def delete_all(self) -> None:
        """Removes every checkpoint (for a run started over with --fresh --overwrite)."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def save(self, step: int, variables: dict, train_state: dict) -> None:
        """Saves a checkpoint at `step` (arrays are fetched from the device first)."""
        self._open().save(step, args=ocp.args.Composite(
            variables=ocp.args.StandardSave(jax.device_get(_variables_tree(variables))),
            train_state=ocp.args.StandardSave(jax.device_get(train_state))), force=True)

    def save_train_state(self, state: TrainState, epoch_sums: dict | None) -> None:
        """Saves the whole train state and the running sums of an unfinished epoch."""
        self.save(int(state.step), state.variables, _train_state_tree(state, epoch_sums))

    def restore_or_initialize(self, initialize: Callable[[], TrainState], *,
                              config: TrainConfig | None = None, fresh: bool = False
                              ) -> tuple[TrainState, dict | None, bool]:
        """(state, the epoch's metric sums so far, restored?): the newest readable checkpoint,
        else `initialize()` (whose result also gives the shapes to restore into).

        `fresh` deletes every checkpoint first. Otherwise, when there is a run to resume, the
        `config` must agree with its saved settings (`TrainConfig.check_resumable`).
        """
        if fresh:
            self.delete_all()
        elif config is not None and self.steps():
            config.check_resumable(read_run_config(self.workdir), self.workdir)
        state = initialize()
        restored = self.restore_newest(
            ("variables", "train_state"),
            targets={"variables": _abstract(state.variables),
                     "train_state": _abstract(_train_state_tree(state, None))})
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
        deleted), so that training can save new checkpoints past it. `targets` maps item
        names to abstract trees (e.g. from `jax.eval_shape`) to restore into.
        """
        targets = targets or {}
        for step in reversed(self.steps()):
            args = {item: ocp.args.JsonRestore() if item == "config"
                    else ocp.args.StandardRestore(targets.get(item)) for item in items}
            try:
                restored = self._open().restore(step, args=ocp.args.Composite(**args))
            except Exception as error:  # orbax raises many types for damaged files
                self._warn_unreadable(step, error, quarantine)
                continue
            return step, {item: restored[item] for item in items}
        return None

    def legacy_config(self) -> dict:
        """The settings that checkpoints written before config.json held them carry in a
        `config` item: the newest such checkpoint's, else {}."""
        for step in reversed(self.steps()):
            if os.path.isdir(os.path.join(self.directory, str(step), "config")):
                restored = self.restore_newest(("config",), quarantine=False)
                return {} if restored is None else dict(restored[1]["config"])
        return {}

    def _warn_unreadable(self, step: int, error: Exception, quarantine: bool) -> None:
        source = os.path.join(self.directory, str(step))
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        moved = ""
        if quarantine:
            target_dir = os.path.join(self.workdir, QUARANTINE_DIR)
            os.makedirs(target_dir, exist_ok=True)
            target = os.path.join(target_dir, str(step))
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(source, target)
            self.close()  # orbax caches the list of steps
            moved = f"; moved to {target}"
        warnings.warn(f"checkpoint {source} is unreadable ({type(error).__name__}: "
                      f"{first_line}){moved}; trying the one before it", stacklevel=3)

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def _train_state_tree(state: TrainState, epoch_sums: dict | None) -> dict:
    """The part of the train state a checkpoint keeps besides the model variables."""
    zero = {name: jnp.zeros((), jnp.float32) for name in METRIC_NAMES}
    return {"opt_state": state.opt_state, "step": state.step,
            "key": jax.random.key_data(state.key), "epoch_sums": epoch_sums or zero}
