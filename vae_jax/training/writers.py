"""One writer for what a run reports after each epoch: `metrics.jsonl`, TensorBoard events,
the epoch's PNG pictures, and the log line.

`EpochWriter.write(record, pictures)` fans one epoch's record (a flat dict of numbers with
`epoch` and `step`) and its pictures out to every sink, so the training loop never touches
a file. Opened on a resumed run, it first drops the lines of `metrics.jsonl` for epochs
that the run will redo.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import numpy as np
from tensorboardX import SummaryWriter

from vae_jax.checkpoints.metrics_file import read_metrics
from vae_jax.checkpoints.workdir import METRICS_FILE, TENSORBOARD_DIR
from vae_jax.evaluation import grids


@dataclasses.dataclass(frozen=True)
class EpochPictures:
    """originals and reconstructions (25, 28, 28, 1) and prior samples (64, 28, 28, 1),
    pixels in [0, 1]."""

    originals: np.ndarray
    reconstructions: np.ndarray
    samples: np.ndarray


def epoch_picture_names(epoch: int) -> tuple[str, str]:
    """The file names of an epoch's pictures: its reconstructions and its prior samples."""
    return f"reconstructions_epoch{epoch}.png", f"samples_epoch{epoch}.png"


class EpochWriter:
    """Writes each epoch's record and pictures into `workdir`; a context manager.

    `completed_epochs`: the epochs the run has already finished; later lines of an existing
    metrics.jsonl are dropped (a resumed run redoes those epochs) when the first record is
    written. Not `enabled`, it writes nothing (every process of a run but the first).
    """

    def __init__(self, workdir: str, *, completed_epochs: int,
                 log: Callable[[str], None] = print, enabled: bool = True):
        self.workdir, self.log, self.enabled = workdir, log, enabled
        self.tensorboard = None
        if not enabled:  # a process other than the one that writes (vae_jax.runtime.mesh)
            return
        self.metrics_path = os.path.join(workdir, METRICS_FILE)
        # Rewritten at the first epoch's record, not before: a run that stops before it has
        # an epoch to record leaves the earlier run's metrics.jsonl as it was.
        self._kept = [record for record in (read_metrics(self.metrics_path, warn=log)
                                            if os.path.exists(self.metrics_path) else [])
                      if record["epoch"] <= completed_epochs]
        self.tensorboard = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

    def __enter__(self) -> "EpochWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def write(self, record: dict, pictures: EpochPictures) -> None:
        if not self.enabled:
            return
        epoch = record["epoch"]
        if self._kept is not None:  # the first record: drop the epochs being redone
            with open(self.metrics_path + ".tmp", "w", encoding="utf-8") as file:
                file.writelines(_json_line(kept) for kept in self._kept)
            os.replace(self.metrics_path + ".tmp", self.metrics_path)
            self._kept = None
        with open(self.metrics_path, "a", encoding="utf-8") as file:
            file.write(_json_line(record))
        mosaics = self._write_pngs(epoch, pictures)
        self._write_tensorboard(record, mosaics)
        self.log(format_epoch_line(record))

    def _write_pngs(self, epoch: int, pictures: EpochPictures) -> dict[str, np.ndarray]:
        """Writes the reconstruction grid and the prior samples; returns their mosaics
        (2-D arrays in [0, 1]) for TensorBoard."""
        grids.save_reconstructions(
            os.path.join(self.workdir, epoch_picture_names(epoch)[0]),
            pictures.originals, pictures.reconstructions, title=f"epoch {epoch}")
        grids.save_samples(os.path.join(self.workdir, epoch_picture_names(epoch)[1]),
                           pictures.samples, title=f"samples from the prior, epoch {epoch}")
        return {"reconstructions": np.concatenate(
                    [grids.tile(pictures.originals, columns=5),
                     grids.tile(pictures.reconstructions, columns=5)], axis=1),
                "samples": grids.tile(pictures.samples)}

    def _write_tensorboard(self, record: dict, mosaics: dict[str, np.ndarray]) -> None:
        """The epoch's scalars (train/…, test/…, schedule/…, speed/…) and image grids."""
        epoch = record["epoch"]
        for name, value in record.items():
            if name.startswith(("train_", "test_")):
                self.tensorboard.add_scalar(name.replace("_", "/", 1), value, epoch)
        for name in ("learning_rate", "kl_weight"):
            self.tensorboard.add_scalar(f"schedule/{name}", record[name], epoch)
        self.tensorboard.add_scalar("speed/images_per_sec", record["images_per_sec"], epoch)
        self.tensorboard.add_scalar("speed/epoch_seconds", record["seconds"], epoch)
        for name, mosaic in mosaics.items():
            self.tensorboard.add_image(name, mosaic, epoch, dataformats="HW")
        self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _json_line(record: dict) -> str:
    """One line of metrics.jsonl; a number that is not finite is refused (it is not JSON)."""
    return json.dumps(record, allow_nan=False) + "\n"


def format_epoch_line(record: dict) -> str:
    return (f"epoch {record['epoch']:3d}  train loss {record['train_loss']:8.2f}  test loss "
            f"{record['test_loss']:8.2f} (rec {record['test_reconstruction']:.2f} + kl "
            f"{record['test_kl']:.2f})  {record['images_per_sec']:7.0f} img/s  "
            f"{record['seconds']:.1f} s")
