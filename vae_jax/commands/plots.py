"""Pictures of a trained VAE: training curves, interpolations, latent map, KL per dimension.

`vae-jax-plots --workdir RUN [--data-dir D] [--dataset mnist] [--split test]`

writes into RUN (the current directory for `--pretrained NAME`):

* `training_curves.png`: train and test loss (negative ELBO per image, nats) per epoch, and
  the test objective (minus the IWAE bound) of iwae and dreg runs, from RUN/metrics.jsonl
  (skipped, with a note, when the directory has none), with a second
  panel without the first tenth of the epochs for runs longer than 20 epochs;
* `interpolations.png`: each row decodes points on the straight line between the posterior
  means of two test images of different digits, with the two inputs at the ends;
* `latent_map.png`: the test images' posterior means in 2-D, coloured by label (projected
  onto their first two principal components when z_dim > 2; the title says so);
* `kl_per_dim.png`: the mean KL(q(z|x) || N(0, 1)) of each latent dimension over the test
  images, largest first, active units (variance of E[z|x] > 0.01) coloured.

Everything runs in eval mode; interpolations and means use no sampling. The images are
binarized (one Bernoulli(pixel) draw each, from --seed) when the run was trained with
`--binarize dynamic` or when `--binarize dynamic` is given, so the encoder sees what it was
trained on.
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from vae_jax.commands import cli
from vae_jax.data.input_pipeline import load_split
from vae_jax.evaluation.plots import make_plots
from vae_jax.model.binarize import binarize


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(
        prog=cli.program_name("python -m vae_jax.commands.plots"),
        description="Training curves, interpolations, latent map and KL per dimension of a "
                    "trained VAE, written into its run directory.")
    cli.add_model_flags(parser)
    cli.add_binarize_flags(parser)
    return parser


def command(args: argparse.Namespace) -> None:
    cli.require_output_writable(args)
    model, variables, _ = cli.load_model(args)
    cli.apply_run_defaults(args)
    images, labels = load_split(args.dataset, args.split, args.data_dir, download=args.download)
    if cli.chosen_binarize_mode(args) == "dynamic":  # what the encoder saw in training
        images = np.asarray(binarize(jax.random.key(args.seed), images))
    for path in make_plots(cli.output_directory(args), model, variables, images, labels):
        print(path)


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
