"""Where a compiled function's time goes: per layer, pass (forward or backward) and op.

`profile(run, compiled, calls)` runs `run()` (one call of `compiled`, blocking) `calls`
times under `jax.profiler`, reads the trace back, and names each XLA op by the JAX source
that made it (the `op_name` metadata of the compiled HLO, e.g.
`jit(step)/transpose(jvp(VAE))/VAE.decode/decoder/deconv2/dot_general`):

* layer: the model path (`decoder/deconv2`, `encoder/bn1`), `encoder/other` or
  `decoder/other` for what lies between layers (activations, reshapes), or `loss and
  optimizer`;
* pass: `forward`, or `backward` for ops under `transpose(...)` (the gradient);
* op: the last primitive (`dot_general`, `gather`, `reduce_sum`, ...).

Times are the ops' own durations, averaged per call. XLA:CPU runs independent ops
concurrently, so on several cores they can add up to more than the wall time.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Callable

import jax

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?op_name="([^"]*)"')
_LAYER = re.compile(r"(?:encoder|decoder)/(?:conv|deconv|bn)\d+")
_PART = re.compile(r"(encoder|decoder)/")


@dataclasses.dataclass(frozen=True)
class OpTime:
    layer: str
    phase: str
    op: str
    milliseconds: float


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its JAX `op_name`, from compiled HLO text."""
    names = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            names[match.group(1)] = match.group(2)
    return names


def classify(op_name: str) -> tuple[str, str, str]:
    """(layer, phase, op) of one JAX op_name (see the module docstring)."""
    layer, part = _LAYER.search(op_name), _PART.search(op_name)
    phase = "backward" if "transpose(" in op_name else "forward"
    op = op_name.rstrip("/").rsplit("/", 1)[-1] or "?"
    if layer:
        return layer.group(0), phase, op
    # Between the layers: activations, reshapes, the sample; or outside the model.
    return (f"{part.group(1)}/other" if part else "loss and optimizer"), phase, op


def _trace_events(directory: str) -> list[dict]:
    paths = glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        raise RuntimeError("jax.profiler wrote no perfetto trace")
    with gzip.open(max(paths, key=os.path.getmtime)) as file:
        trace = json.load(file)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def profile(run: Callable[[], object], compiled: jax.stages.Compiled, calls: int = 3
            ) -> list[OpTime]:
    """Per (layer, pass, op): milliseconds per call, summed over the ops, largest first."""
    names = op_names(compiled.as_text())
    with tempfile.TemporaryDirectory() as directory:
        jax.profiler.start_trace(directory, create_perfetto_trace=True)
        try:
            for _ in range(calls):
                run()
        finally:
            jax.profiler.stop_trace()
        events = _trace_events(directory)
    totals = collections.Counter()
    for event in events:
        name = event.get("name")
        if event.get("ph") == "X" and name in names:
            totals[classify(names[name])] += event.get("dur", 0) / 1e3 / calls  # us -> ms
    return [OpTime(*key, round(ms, 2)) for key, ms in totals.most_common()]


def by_layer(times: list[OpTime]) -> list[tuple[str, str, float]]:
    """(layer, pass, milliseconds) summed over ops, largest first."""
    totals = collections.Counter()
    for op_time in times:
        totals[(op_time.layer, op_time.phase)] += op_time.milliseconds
    return [(layer, phase, round(ms, 2)) for (layer, phase), ms in totals.most_common()]
