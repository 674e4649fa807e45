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


def entry_point(module_name: str, default_prog: str):
    """A console script's function: `run_command(module_name, default_prog)`."""
    def main() -> int:
        return run_command(module_name, default_prog)
    main.__name__ = module_name.rsplit(".", 1)[1]
    return main


# The `vae-jax-*` console scripts (pyproject.toml), one per command module.
train = entry_point("vae_jax.train", "train.py")
evaluate = entry_point("vae_jax.evaluate", "python -m vae_jax.evaluate")
sample = entry_point("vae_jax.sample", "python -m vae_jax.sample")
plots = entry_point("vae_jax.plots", "python -m vae_jax.plots")
pool_evaluations = entry_point("vae_jax.pool_evaluations", "python -m vae_jax.pool_evaluations")
bench = entry_point("vae_jax.bench", "python -m vae_jax.bench")
torch_port = entry_point("vae_jax.torch_port", "python -m vae_jax.torch_port")
