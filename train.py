#!/usr/bin/env python
"""Train the course's VAE: `python train.py [--platform gpu] [--epochs 10] [--workdir runs/vae]`.

A shim for `vae_jax.train.main` (also `python -m vae_jax.train` and `vae-jax-train`); see
README.md for the flags. It turns on huge pages for XLA's buffers (`vae_jax.hugepages`)
before JAX loads, which saves the re-executed process from importing everything twice.
"""

import sys

from vae_jax import hugepages

if __name__ == "__main__":
    hugepages.relaunch_with_huge_pages()
    from vae_jax.train import main
    sys.exit(main())
