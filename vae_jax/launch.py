"""The commands' entry points (`train.py` and the `vae-jax-*` console scripts).

Each imports its command module only when called, inside a guard: JAX and TensorFlow take
seconds to load, and a Ctrl-C in those seconds ends the command with one line,
`PROG: interrupted`, and exit code 130, as a later Ctrl-C does (`vae_jax.cli`), instead of
a traceback through the import machinery. This module imports only the standard library.
"""

from __future__ import annotations

import importlib
import os
import sys


def program_name(default: str) -> str:
    """How the user called the command: an installed `vae-jax-*` script's name, else
    `default` (e.g. `python -m vae_jax.evaluate`)."""
    called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return called if called.startswith("vae-jax-") else default


def run_command(module_name: str, default_prog: str) -> int:
    """`module_name.main()`'s exit code; 130 with one line if interrupted while importing."""
    try:
        main = importlib.import_module(module_name).main
    except KeyboardInterrupt:
        print(f"{program_name(default_prog)}: interrupted", file=sys.stderr)
        return 130
    return main()


def train() -> int:
    return run_command("vae_jax.train", "train.py")


def evaluate() -> int:
    return run_command("vae_jax.evaluate", "python -m vae_jax.evaluate")


def sample() -> int:
    return run_command("vae_jax.sample", "python -m vae_jax.sample")


def plots() -> int:
    return run_command("vae_jax.plots", "python -m vae_jax.plots")


def pool_evaluations() -> int:
    return run_command("vae_jax.pool_evaluations", "python -m vae_jax.pool_evaluations")


def bench() -> int:
    return run_command("vae_jax.bench", "python -m vae_jax.bench")


def torch_port() -> int:
    return run_command("vae_jax.torch_port", "python -m vae_jax.torch_port")
