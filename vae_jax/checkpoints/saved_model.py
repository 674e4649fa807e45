"""A trained model on disk: `save_variables`, `load_variables` and `load_model`.

A directory made by `save_variables` (e.g. by `vae-jax-torch-port`) holds `variables/` (an
orbax checkpoint of `{"params", "batch_stats"}`, with `variables/digests.json`) and a
`config.json` with the model configuration. `load_variables` and `load_model` read such a
directory or a training run's (its newest readable checkpoint, `vae_jax.checkpoints.
run_checkpoints`, and its config.json). Everything is written with orbax: no pickle, so
loading runs no code from files.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from vae_jax.checkpoints import digests
from vae_jax.checkpoints.config_file import read_config_file, write_config_file
from vae_jax.checkpoints.orbax_logs import quiet_orbax
from vae_jax.checkpoints.run_checkpoints import (
    CheckpointError,
    RunCheckpoints,
    error_line,
    variables_tree,
)
from vae_jax.checkpoints.workdir import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    VARIABLES_DIR,
    command_line,
    exclusive,
    holds_training_run,
    require_writable,
)
from vae_jax.model.binarize import BINARIZE_MODES
from vae_jax.model.vae import VAE, variable_shapes
from vae_jax.runtime.errors import is_positive_int

DIGESTS_FILE = "digests.json"  # inside a `save_variables` directory


def save_variables(workdir: str, variables: dict, config: dict | None = None) -> str:
    """Writes `{"params", "batch_stats"}` (and the model `config`) into `workdir`.

    An existing `variables/` is replaced only once the new one is complete. Returns the path.
    Refuses (CheckpointError) a `workdir` that holds a training run, whose config.json this
    would overwrite, and one that another process is writing (`vae_jax.checkpoints.workdir`).
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
    quiet_orbax()
    target = os.path.join(workdir, VARIABLES_DIR)
    staging = target + ".saving"
    shutil.rmtree(staging, ignore_errors=True)
    tree = jax.device_get(variables_tree(variables))
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
            restored = run.restore_newest(("variables",), set_aside=False)
        if restored is not None:
            return jax.tree.map(np.asarray, variables_tree(restored[1]["variables"]))
        if steps:
            damaged = "the only one is" if len(steps) == 1 else f"all {len(steps)} are"
            raise CheckpointError(f"no readable checkpoint in {run.directory}: {damaged} "
                                  "damaged (see the warnings above)")
    path = os.path.join(workdir, VARIABLES_DIR)
    if not os.path.isdir(path):
        raise CheckpointError(f"no saved variables in {workdir} (expected "
                              f"{os.path.join(workdir, CHECKPOINTS_DIR)} or {path})")
    quiet_orbax()
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
    return jax.tree.map(np.asarray, variables_tree(tree))


def training_binarize(workdir: str) -> str | None:
    """The `binarize` setting the run in `workdir` was trained with, when it records one
    (None otherwise, e.g. for variables saved by `save_variables`)."""
    try:
        mode = read_config_file(workdir).get("binarize")
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
    config = read_config_file(workdir)
    kernel_sizes = _sizes_of(variables)
    if "z_dim" not in config:  # e.g. variables saved without config.json: read it off the kernel
        if kernel_sizes is None:
            raise CheckpointError(f"the variables in {workdir} are not the course VAE's "
                                  f"and there is no config.json")
        config["z_dim"] = kernel_sizes["z_dim"]
    config.setdefault("im_chan", 1)
    config.setdefault("hidden_dim", VAE.hidden_dim)
    for key in ("z_dim", "im_chan", "hidden_dim"):
        if not is_positive_int(config[key]):
            raise CheckpointError(f"{os.path.join(workdir, CONFIG_FILE)} is damaged: {key} "
                                  f"must be a positive integer, got {config[key]!r}")
    sizes = {key: config[key] for key in ("z_dim", "im_chan", "hidden_dim")}
    mismatch = CheckpointError(f"the variables in {workdir} do not fit a VAE with "
                               f"{', '.join(f'{key}={value}' for key, value in sizes.items())} "
                               f"(config.json)")
    if kernel_sizes != sizes:  # read off the kernels: no model of absurd size is built
        raise mismatch
    model = VAE(**sizes)
    shapes = lambda tree: jax.tree.map(lambda x: tuple(np.shape(x)), tree)  # noqa: E731
    if shapes(variable_shapes(model)) != shapes(variables):
        raise mismatch
    return model, variables, config


def _sizes_of(variables: dict) -> dict | None:
    """z_dim, im_chan and hidden_dim as the kernels' shapes give them (None when the tree is
    not the course VAE's)."""
    try:
        conv1 = variables["params"]["encoder"]["conv1"]["kernel"].shape   # (4, 4, C, h)
        deconv1 = variables["params"]["decoder"]["deconv1"]["kernel"].shape  # (3, 3, z, 16h)
        return {"z_dim": int(deconv1[2]), "im_chan": int(conv1[2]), "hidden_dim": int(conv1[3])}
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
