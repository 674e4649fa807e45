"""The commands' entry points (`train.py` and the `vae-jax-*` console scripts).

Each imports its command module only when called, inside a guard: JAX and TensorFlow take
seconds to load, and a Ctrl-C in those seconds ends the command with one line,
`PROG: interrupted`, and exit code 130, as a later Ctrl-C does (`vae_jax.commands.cli`), instead of
a traceback through the import machinery, wherever it lands (`vae_jax.runtime.interrupts`).
This module imports only the standard library.
"""

from __future__ import annotations

import importlib
import os
import sys

from vae_jax.runtime import interrupts


def program_name(default: str) -> str:
    """How the user called the command: an installed `vae-jax-*` script's name, else
    `default` (e.g. `python -m vae_jax.commands.evaluate`)."""
    called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return called if called.startswith("vae-jax-") else default


def run_command(module_name: str, default_prog: str) -> int:
    """`module_name.main()`'s exit code; 130 with one line if interrupted while importing.
    `--version` answers at once, before the command's module (and JAX) is imported."""
    if "--version" in sys.argv[1:]:
        print(version_line(program_name(default_prog)))
        return 0
    interrupts.hold()  # JAX, jaxlib, numpy: Ctrl-C acted on once they have loaded
    try:
        try:
            main = importlib.import_module(module_name).main
        finally:
            interrupts.release()  # raises KeyboardInterrupt if Ctrl-C was held
    except KeyboardInterrupt:
        return report_interrupted(program_name(default_prog))
    except Exception:
        if interrupts.arrived():  # an extension's import interrupted: an ImportError, say
            return report_interrupted(program_name(default_prog))
        raise
    return main()


def report_interrupted(prog: str) -> int:
    """`PROG: interrupted` on stderr; exit code 130 (128 + SIGINT)."""
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130


def version_line(prog: str) -> str:
    """What `--version` prints: `PROG VERSION`."""
    from vae_jax import installed_version
    return f"{prog} {installed_version()}"


def entry_point(module_name: str, default_prog: str):
    """A console script's function: `run_command(module_name, default_prog)`."""
    def main() -> int:
        return run_command(module_name, default_prog)
    main.__name__ = module_name.rsplit(".", 1)[1]
    return main


def command_entry_point(name: str):
    """The console script of the command module `vae_jax.commands.<name>`."""
    return entry_point(f"vae_jax.commands.{name}", f"python -m vae_jax.commands.{name}")


# The `vae-jax-*` console scripts (pyproject.toml), one per command module.
train = entry_point("vae_jax.commands.train", "train.py")
evaluate = command_entry_point("evaluate")
sample = command_entry_point("sample")
plots = command_entry_point("plots")
pool_evaluations = command_entry_point("pool_evaluations")
bench = command_entry_point("bench")
torch_port = command_entry_point("torch_port")
explore = command_entry_point("explore")
export_data = command_entry_point("export_data")
grade = command_entry_point("grade")
