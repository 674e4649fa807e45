"""Where a run may start from instead of a fresh initialisation (`--init-from SOURCE`).

SOURCE is a training run's workdir (its newest readable checkpoint), a folder of saved
variables (`save_variables`, what `vae-jax-torch-port` writes) or `pretrained:NAME`. The run
takes its weights and BatchNorm statistics, nothing else: the optimizer, the step count and
the schedules start fresh. Everything is checked before the run writes anything: the source
must exist, hold an intact model (digests verified) of the run's architecture, and not be
the run's own workdir.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from vae_jax import pretrained
from vae_jax.checkpoints import digests, saved_model
from vae_jax.runtime.errors import InputError, first_line

PRETRAINED_PREFIX = "pretrained:"
ARCHITECTURE = (("z_dim", "--z-dim"), ("hidden_dim", "--hidden-dim"), ("im_chan", None))


@dataclasses.dataclass(frozen=True)
class InitialModel:
    """The source's variables {"params", "batch_stats"}, where they came from (`source`,
    as given) and a digest of every array (`digest`, SHA-256 over the arrays' digests)."""

    variables: dict
    source: str
    digest: str


def source_directory(source: str) -> str:
    """The folder `source` names; InputError (one line) for an unknown pretrained name."""
    if source.startswith(PRETRAINED_PREFIX):
        try:
            return pretrained.path(source[len(PRETRAINED_PREFIX):])
        except InputError as error:
            raise InputError(f"--init-from {source}: {error}") from None
    return source


def load_initial_model(source: str, model_config: dict, workdir: str) -> InitialModel:
    """The variables a run with `model_config` (z_dim, im_chan, hidden_dim) in `workdir`
    starts from; InputError naming --init-from when the source is missing, the run's own
    workdir, damaged, or of another architecture."""
    directory = source_directory(source)
    if not os.path.isdir(directory):
        raise InputError(f"--init-from {source} does not exist (give a run's workdir, a "
                         f"folder of saved variables, or pretrained:NAME)")
    if os.path.realpath(directory) == os.path.realpath(workdir):
        raise InputError(f"--init-from {source} is this run's own --workdir: a run resumes "
                         f"from its own checkpoints by itself; start from another run")
    try:
        _, variables, config = saved_model.load_model(directory)
    except InputError as error:
        raise InputError(f"--init-from {source}: {first_line(error)}") from None
    for key, flag in ARCHITECTURE:
        if config[key] != model_config[key]:
            wanted = f"the run's {flag} is {model_config[key]}" if flag else \
                f"the run trains {model_config[key]}-channel images"
            raise InputError(f"--init-from {source} holds a model with {key}={config[key]}, "
                             f"but {wanted}: the architectures must match")
    return InitialModel(variables, source, variables_digest(variables))


def variables_digest(variables: dict) -> str:
    """One SHA-256 for a whole tree of arrays, from each array's own digest and path."""
    combined = hashlib.sha256()
    for path, digest in sorted(digests.tree_digests(variables).items()):
        combined.update(f"{path}={digest};".encode())
    return combined.hexdigest()
