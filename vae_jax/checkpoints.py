"""Saving and loading model variables with orbax (no pickle: loading runs no code from files).

A run's directory holds `variables/` (an orbax checkpoint of `{"params", "batch_stats"}`)
and `config.json` (the model configuration, e.g. `{"z_dim": 32}`).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

VARIABLES_DIR = "variables"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A run directory holds no readable variables."""


def save_variables(workdir: str, variables: dict, config: dict | None = None) -> str:
    """Writes `{"params", "batch_stats"}` (and the model `config`) into `workdir`.

    An existing `variables/` is replaced only once the new one is complete. Returns the path.
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    target = os.path.join(workdir, VARIABLES_DIR)
    staging = target + ".saving"
    shutil.rmtree(staging, ignore_errors=True)
    tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(staging, jax.device_get(tree))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    if config is not None:
        config_path = os.path.join(workdir, CONFIG_FILE)
        with open(config_path + ".tmp", "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        os.replace(config_path + ".tmp", config_path)
    return target


def load_config(workdir: str) -> dict[str, Any]:
    """The `config.json` saved beside the variables ({} if there is none)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_variables(workdir: str) -> dict:
    """Reads `{"params": ..., "batch_stats": ...}` (numpy arrays) saved in `workdir`."""
    path = os.path.join(os.path.abspath(workdir), VARIABLES_DIR)
    if not os.path.isdir(path):
        raise CheckpointError(f"no saved variables in {workdir} (expected {path})")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.restore(path)
    except Exception as error:  # orbax raises many types for damaged files
        raise CheckpointError(f"cannot read variables in {path}: {error}") from error
    return jax.tree.map(np.asarray, {"params": tree["params"],
                                     "batch_stats": tree.get("batch_stats", {})})
