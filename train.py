#!/usr/bin/env python
"""Train the course's VAE: `python train.py [--platform gpu] [--epochs 10] [--workdir runs/vae]`.

A shim for `vae_jax.train.main` (also `python -m vae_jax.train` and `vae-jax-train`); see
README.md for the flags.
"""

import sys

from vae_jax.train import main

if __name__ == "__main__":
    sys.exit(main())
