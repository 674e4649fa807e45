"""Trained models that ship with the package, ready to load without training.

    from vae_jax import pretrained
    pretrained.names()                         # ["binarized", "binarized_dreg", "course"]
    model, variables, config = pretrained.load("course")
    pretrained.card("course")                  # how it was trained, what it reaches

Each model is a folder here made by `save_variables` (orbax arrays with their SHA-256
digests, checked on every load, and config.json) plus `model_card.json`: the command that
trained it, the hardware and wall time, its results, and a fingerprint (its negative ELBO
on fixed synthetic images) that tests/test_pretrained.py reproduces. The commands take
`--pretrained NAME` in place of `--workdir`. `scripts/make_pretrained.py` adds one.
"""

from __future__ import annotations

import json
import os

from vae_jax.checkpoints.saved_model import load_model
from vae_jax.model.vae import VAE
from vae_jax.runtime.errors import InputError

DIRECTORY = os.path.dirname(os.path.abspath(__file__))
CARD_FILE = "model_card.json"


def names() -> list[str]:
    """The shipped models' names, sorted."""
    return sorted(name for name in os.listdir(DIRECTORY)
                  if os.path.isfile(os.path.join(DIRECTORY, name, CARD_FILE)))


def path(name: str) -> str:
    """The folder of model `name`; InputError (one line) for an unknown name."""
    if name not in names():
        raise InputError(f"no pretrained model {name!r}; there are: {', '.join(names())}")
    return os.path.join(DIRECTORY, name)


def card(name: str) -> dict:
    """Model `name`'s card: `description`, `command`, `hardware`, `results`, ..."""
    with open(os.path.join(path(name), CARD_FILE)) as file:
        return json.load(file)


def load(name: str) -> tuple[VAE, dict, dict]:
    """(model, variables, config) of model `name`, its digests verified."""
    return load_model(path(name))
