"""Damaged checkpoints are moved aside, never deleted: `workdir/unreadable_checkpoints/`."""

from __future__ import annotations

import os
import shutil

from vae_jax.checkpoints.workdir import QUARANTINE_DIR


def set_aside(checkpoint: str, workdir: str) -> str:
    """Moves the checkpoint directory `checkpoint` into `workdir/unreadable_checkpoints/`
    (as `<step>`, or `<step>-2`, ... when a step is set aside twice) and returns where."""
    target = unused_path(os.path.join(workdir, QUARANTINE_DIR, os.path.basename(checkpoint)))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(checkpoint, target)
    return target


def unused_path(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ...: the first that does not exist."""
    candidate, number = path, 1
    while os.path.exists(candidate):
        number += 1
        candidate = f"{path}-{number}"
    return candidate
