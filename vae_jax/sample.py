"""Samples from a trained VAE's prior as a PNG grid.

`python -m vae_jax.sample --workdir RUN [--num 64] [--seed 0] [--out FILE.png]`

Draws z ~ N(0, I) from `jax.random.key(seed)`, decodes it in eval mode (BatchNorm running
averages) and writes sigmoid(logits), the Bernoulli means, as a square grid (the same
seed gives the same picture). The default output is RUN/samples_seed{seed}.png.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

from vae_jax import cli, evaluate, grids
from vae_jax.checkpoints import load_model
from vae_jax.errors import InputError
from vae_jax.models import VAE


def sample_images(model: VAE, variables: dict, key: jax.Array, num: int) -> np.ndarray:
    """`num` decoded prior samples, (num, 28, 28, im_chan) in [0, 1]."""
    z = jax.random.normal(key, (num, model.z_dim))
    logits = evaluate.jitted_decoder(model)(variables, z)
    return np.asarray(jax.nn.sigmoid(logits))


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(prog=cli.program_name("python -m vae_jax.sample"),
                               description="Decode samples z ~ N(0, I) into a PNG grid.")
    cli.add_model_flags(parser, data=False)
    parser.add_argument("--num", type=cli.positive_int, default=64,
                        help="how many samples (default 64, an 8x8 grid)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="the PNG file (default: WORKDIR/samples_seed{SEED}.png)")
    return parser


def command(args: argparse.Namespace) -> None:
    out = args.out or os.path.join(args.workdir, f"samples_seed{args.seed}.png")
    model, variables, _ = load_model(args.workdir)
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise InputError(f"--out {out}: {directory} is not a directory")
    samples = sample_images(model, variables, jax.random.key(args.seed), args.num)
    grids.save_samples(out, samples, title=f"{args.num} samples from the prior, seed {args.seed}")
    print(out)


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
