"""Samples from a trained VAE's prior as a PNG grid.

`vae-jax-sample --workdir RUN | --pretrained NAME [--num 64] [--seed 0] [--out FILE.png]`

Draws z ~ N(0, I) from `jax.random.key(seed)`, decodes it in eval mode (BatchNorm running
averages) and writes sigmoid(logits), the Bernoulli means, as a square grid (the same
seed gives the same picture). The default output is RUN/samples_seed{seed}.png (in the
current directory for a --pretrained model).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

from vae_jax.commands import cli
from vae_jax.evaluation import grids
from vae_jax.evaluation.sampling import MAX_SAMPLES, sample_images
from vae_jax.runtime.errors import InputError


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(prog=cli.program_name("python -m vae_jax.commands.sample"),
                               description="Decode samples z ~ N(0, I) into a PNG grid.")
    cli.add_model_flags(parser, data=False)
    parser.add_argument("--num", type=cli.bounded_int(1, MAX_SAMPLES), default=64,
                        help=f"how many samples, at most {MAX_SAMPLES:,} (default 64, an 8x8 "
                             "grid)")
    cli.add_seed_flag(parser)
    parser.add_argument("--out", default=None,
                        help="the PNG file, or a directory to write samples_seed{SEED}.png "
                             "into (default: WORKDIR/samples_seed{SEED}.png)")
    return parser


def output_path(args: argparse.Namespace) -> str:
    """Where the grid goes: --out (a .png file, or a directory to put it in), else the
    workdir; samples_seed{SEED}.png inside a directory. Raises InputError when it cannot be
    written."""
    name = f"samples_seed{args.seed}.png"
    if not args.out:
        cli.require_output_writable(args)
    out = args.out or os.path.join(cli.output_directory(args), name)
    if os.path.isdir(out):
        out = os.path.join(out, name)
    elif not out.lower().endswith(".png"):
        raise InputError(f"--out {out}: give a .png file or an existing directory")
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise InputError(f"--out {out}: {directory} is not a directory")
    if not os.access(directory, os.W_OK) or (os.path.exists(out) and not os.access(out, os.W_OK)):
        raise InputError(f"--out {out}: cannot write there")
    return out


def command(args: argparse.Namespace) -> None:
    model, variables, _ = cli.load_model(args)
    out = output_path(args)
    samples = sample_images(model, variables, jax.random.key(args.seed), args.num)
    grids.save_samples(out, samples, title=f"{args.num} samples from the prior, seed {args.seed}")
    print(out)


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
