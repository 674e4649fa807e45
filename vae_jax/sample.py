"""Samples from a trained VAE's prior as a PNG grid.

`python -m vae_jax.sample --workdir RUN [--num 64] [--seed 0] [--out FILE.png]`

Draws z ~ N(0, I) from `jax.random.key(seed)`, decodes it in eval mode (BatchNorm running
averages) and writes sigmoid(logits), the Bernoulli means, as a square grid (the same
seed gives the same picture). The default output is RUN/samples_seed{seed}.png.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

from vae_jax import evaluate, grids
from vae_jax.models import VAE


def sample_images(model: VAE, variables: dict, key: jax.Array, num: int) -> np.ndarray:
    """`num` decoded prior samples, (num, 28, 28, im_chan) in [0, 1]."""
    z = jax.random.normal(key, (num, model.z_dim))
    logits = evaluate.jitted_decoder(model)(variables, z)
    return np.asarray(jax.nn.sigmoid(logits))


def parse_args(argv=None):
    parser = evaluate.OneLineParser(prog="python -m vae_jax.sample",
                                    description="Decode samples z ~ N(0, I) into a PNG grid.")
    evaluate.add_common_arguments(parser, data=False)
    parser.add_argument("--num", type=evaluate.positive_int, default=64,
                        help="how many samples (default 64, an 8x8 grid)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="the PNG file (default: WORKDIR/samples_seed{SEED}.png)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    prog = "python -m vae_jax.sample"
    if not evaluate.select_platform(prog, args.platform):
        return 2
    out = args.out or os.path.join(args.workdir, f"samples_seed{args.seed}.png")
    try:
        model, variables, _ = evaluate.load_model(args.workdir)
    except evaluate.EvaluationError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        print(f"{prog}: error: --out {out}: {directory} is not a directory", file=sys.stderr)
        return 2
    samples = sample_images(model, variables, jax.random.key(args.seed), args.num)
    grids.save_samples(out, samples, title=f"{args.num} samples from the prior, seed {args.seed}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
