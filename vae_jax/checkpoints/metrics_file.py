"""A run's `metrics.jsonl`, one JSON record per epoch, read back (`vae_jax.training.writers`
writes it; plots and scripts read it)."""

from __future__ import annotations

import json
from typing import Callable

from vae_jax.checkpoints.workdir import refuse_json_constant


def read_metrics(path: str, warn: Callable[[str], None] | None = None) -> list[dict]:
    """The records of a metrics.jsonl file, one per epoch, in the order of the epochs.

    A line that is not a JSON object with an integer `epoch` (the half-written last line of
    a run killed while appending, say) is skipped, with `warn(message)`; of two lines for
    the same epoch the later one is kept.
    """
    records: dict[int, dict] = {}
    with open(path, encoding="utf-8", errors="replace") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, parse_constant=refuse_json_constant)
                records[int(record["epoch"])] = record
            except (ValueError, KeyError, TypeError):
                if warn is not None:
                    warn(f"{path}, line {number}, is not a complete record (a run killed "
                         "while writing it?); skipped")
    return [records[epoch] for epoch in sorted(records)]
