#!/usr/bin/env python
"""Train the course's VAE: `python train.py [--platform gpu] [--epochs 10] [--workdir runs/vae]`.

A shim for `vae_jax.commands.train.main` (also `vae-jax-train`); see docs/guides/training.md for the
flags. `vae_jax.commands.launch` imports it, so that a Ctrl-C while JAX loads is one line.
It turns on huge pages for XLA's buffers (`vae_jax.runtime.hugepages`) before JAX loads,
which saves the re-executed process from importing everything twice.
"""

import sys

from vae_jax.runtime import hugepages, interrupts

if __name__ == "__main__":
    hugepages.relaunch_with_huge_pages()
    interrupts.hold()  # from the first line: Ctrl-C while loading is one line, exit 130
    from vae_jax.commands import launch
    sys.exit(launch.run_command("vae_jax.commands.train", "train.py"))
