"""Exact resume: the train state into a checkpoint, and back.

A checkpoint (`vae_jax.checkpoints.run_checkpoints`) keeps the model variables and, as its
`train_state` item, the optimizer state, the step, the PRNG key's data and the running
metric sums of an unfinished epoch: all a run needs to go on as if it had never stopped.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.checkpoints.config_file import read_config_file
from vae_jax.checkpoints.run_checkpoints import RunCheckpoints
from vae_jax.model.losses import METRIC_NAMES
from vae_jax.training.config import TrainConfig
from vae_jax.training.train_state import TrainState, step_of


def train_state_tree(state: TrainState, epoch_sums: dict | None) -> dict:
    """The part of the train state a checkpoint keeps besides the model variables."""
    # Placed like the step (replicated on the run's mesh), as orbax wants with many processes.
    zero = {name: jnp.zeros_like(state.step, dtype=jnp.float32) for name in METRIC_NAMES}
    return {"opt_state": state.opt_state, "step": state.step,
            "key": jax.random.key_data(state.key), "epoch_sums": epoch_sums or zero}


def abstract_tree(tree, sharding=None):
    """The shapes and dtypes of `tree`'s arrays (and where to put them, `sharding`)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype,
                                                       sharding=sharding), tree)


def save_train_state(run: RunCheckpoints, state: TrainState, epoch_sums: dict | None) -> None:
    """Saves the whole train state and the running sums of an unfinished epoch."""
    run.save(step_of(state), state.variables, train_state_tree(state, epoch_sums))


def restore_or_initialize(run: RunCheckpoints, initialize: Callable[[], TrainState], *,
                          config: TrainConfig | None = None, sharding=None
                          ) -> tuple[TrainState, dict | None, bool]:
    """(state, the epoch's metric sums so far, restored?): the newest readable checkpoint of
    `run`, else `initialize()` (whose result also gives the shapes to restore into).

    When there is a run to resume, `config` must agree with its saved settings
    (`TrainConfig.check_resumable`). A restored state's arrays are placed with `sharding`
    (e.g. replicated on the run's mesh, however many devices wrote them).
    """
    if config is not None and run.steps():
        config.check_resumable(read_config_file(run.workdir), run.workdir)
    state = initialize()
    restored = run.restore_newest(
        ("variables", "train_state"),
        targets={"variables": abstract_tree(state.variables, sharding),
                 "train_state": abstract_tree(train_state_tree(state, None), sharding)})
    if restored is None:
        return state, None, False
    _, trees = restored
    saved = trees["train_state"]
    state = state.replace(
        params=trees["variables"]["params"], batch_stats=trees["variables"]["batch_stats"],
        opt_state=saved["opt_state"], step=saved["step"],
        key=jax.random.wrap_key_data(saved["key"]))
    return state, saved["epoch_sums"], True
