"""A run's `config.json`: the model configuration and the run's settings, written whole.

`vae_jax.training.config.TrainConfig.to_json` gives what a training run writes; a directory
of saved variables holds the model configuration alone (`z_dim`, `im_chan`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from vae_jax.checkpoints.workdir import CONFIG_FILE, refuse_json_constant
from vae_jax.runtime.errors import InputError


def write_config_file(workdir: str, config: Mapping[str, Any]) -> None:
    """Writes `config` as workdir/config.json, replacing the old file only once complete."""
    path = os.path.join(workdir, CONFIG_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as file:
        json.dump(dict(config), file, indent=2, sort_keys=True, allow_nan=False)
        file.flush()
        os.fsync(file.fileno())
    os.replace(path + ".tmp", path)


class ConfigFileError(InputError):
    """A config.json that cannot be read or is not a JSON object."""


def read_config_file(workdir: str) -> dict[str, Any]:
    """workdir/config.json as a dict ({} when there is none).

    Raises ConfigFileError (one line) when the file is unreadable, is not JSON, or does not
    hold a JSON object.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file, parse_constant=refuse_json_constant)
    except OSError as error:
        raise ConfigFileError(f"cannot read {path}: {error.strerror}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigFileError(f"{path} is damaged: it is not JSON ({_reason(error)})") from None
    if not isinstance(config, dict):
        raise ConfigFileError(f"{path} is damaged: it holds a {type(config).__name__}, not a "
                              "JSON object")
    return config


def _reason(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg}, line {error.lineno}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__
