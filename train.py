#!/usr/bin/env python
"""Train the course's VAE: `python train.py [--platform gpu] [--epochs 10] [--workdir runs/vae]`.

A shim for `vae_jax.train.main` (also `python -m vae_jax.train` and `vae-jax-train`); see
README.md for the flags. `vae_jax.launch` imports it, so that a Ctrl-C while JAX loads is
one line. It turns on huge pages for XLA's buffers (`vae_jax.hugepages`)
before JAX loads, which saves the re-executed process from importing everything twice.
"""

import sys

from vae_jax import hugepages, launch

if __name__ == "__main__":
    hugepages.relaunch_with_huge_pages()
    sys.exit(launch.run_command("vae_jax.train", "train.py"))
