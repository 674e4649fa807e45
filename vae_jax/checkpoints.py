"""Checkpoints and saved variables, with orbax (no pickle: loading runs no code from files).

A training run's directory holds `checkpoints/<step>/` (an orbax `CheckpointManager`), each
with three items: `variables` (`{"params", "batch_stats"}`), `train_state` (optimizer
state, step, PRNG key data, the epoch's running metric sums) and `config` (JSON). orbax
writes a checkpoint under a temporary name and renames it when complete, so a crash during
a save leaves no checkpoint that restores to something wrong.

A directory made by `save_variables` (e.g. by `python -m vae_jax.torch_port`) holds
`variables/` and `config.json` instead. `load_variables` reads either.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINTS_DIR = "checkpoints"
VARIABLES_DIR = "variables"
CONFIG_FILE = "config.json"
QUARANTINE_DIR = "unreadable_checkpoints"


class CheckpointError(ValueError):
    """A run directory holds no readable variables or checkpoints."""


def _variables_tree(variables) -> dict:
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _write_json(path: str, data: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


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
        save_config(workdir, config)
    return target


def save_config(workdir: str, config: dict) -> None:
    """Writes the model configuration (e.g. `{"z_dim": 32, "im_chan": 1}`) as config.json."""
    _write_json(os.path.join(workdir, CONFIG_FILE), config)


def load_config(workdir: str) -> dict[str, Any]:
    """The model configuration saved in `workdir` ({} if there is none)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_variables(workdir: str) -> dict:
    """`{"params": ..., "batch_stats": ...}` (numpy arrays) of the newest checkpoint in
    `workdir`, or of the variables saved there by `save_variables`."""
    workdir = os.path.abspath(workdir)
    if os.path.isdir(os.path.join(workdir, CHECKPOINTS_DIR)):
        run = RunCheckpoints(workdir)
        try:
            restored = run.restore_newest(("variables",), quarantine=False)
        finally:
            run.close()
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


class RunCheckpoints:
    """The checkpoints of one training run, in `workdir/checkpoints`, newest `keep` kept."""

    def __init__(self, workdir: str, keep: int = 3):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, CHECKPOINTS_DIR)
        self.keep = keep
        self._manager = None

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

    def save(self, step: int, variables: dict, train_state: dict, config: dict) -> None:
        """Saves a checkpoint at `step` (arrays are fetched from the device first)."""
        self._open().save(step, args=ocp.args.Composite(
            variables=ocp.args.StandardSave(jax.device_get(_variables_tree(variables))),
            train_state=ocp.args.StandardSave(jax.device_get(train_state)),
            config=ocp.args.JsonSave(config)), force=True)

    def restore_newest(self, items=("variables", "train_state", "config"), targets=None,
                       quarantine: bool = True) -> tuple[int, dict] | None:
        """(step, {item: tree}) of the newest readable checkpoint, or None when there is none.

        An unreadable checkpoint gets a warning naming it, and the one before it is tried;
        with `quarantine` it is also moved to `workdir/unreadable_checkpoints/` (kept, not
        deleted), so that training can save new checkpoints past it. `targets` maps item
        names to abstract trees (e.g. from `jax.eval_shape`) to restore into.
        """
        targets = targets or {}
        for step in reversed(self.steps()):
            args = {}
            for item in items:
                if item == "config":
                    args[item] = ocp.args.JsonRestore()
                else:
                    args[item] = ocp.args.StandardRestore(targets.get(item))
            try:
                restored = self._open().restore(step, args=ocp.args.Composite(**args))
            except Exception as error:  # orbax raises many types for damaged files
                self._warn_unreadable(step, error, quarantine)
                continue
            return step, {item: restored[item] for item in items}
        return None

    def read_config(self) -> dict | None:
        """The run configuration stored with the newest readable checkpoint, if any."""
        restored = self.restore_newest(("config",), quarantine=False)
        return None if restored is None else dict(restored[1]["config"])

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
