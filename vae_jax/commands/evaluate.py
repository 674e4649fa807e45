"""`vae-jax-evaluate --workdir RUN [--iwae-samples 5000] [--binarize dynamic] [--json]`.

The negative ELBO, the IWAE bound on the NLL, the KL per latent dimension and the active
units of a trained run or saved variables, in nats (`vae_jax.evaluation.likelihood`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vae_jax.commands import cli
from vae_jax.data.input_pipeline import load_split
from vae_jax.evaluation.elbo import DEFAULT_BATCH_SIZE
from vae_jax.evaluation.likelihood import (
    DECODES_PER_CALL,
    DEFAULT_IWAE_SAMPLES,
    MAX_IWAE_SAMPLES,
    evaluate_model,
    format_summary,
)
from vae_jax.runtime.distributed import is_main_process
from vae_jax.runtime.mesh import DataParallel


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(prog=cli.program_name("python -m vae_jax.commands.evaluate"),
                               description="Evaluate a trained VAE in nats on a tfds split.")
    cli.add_model_flags(parser)
    parser.add_argument("--iwae-samples", type=cli.bounded_int(1, MAX_IWAE_SAMPLES),
                        default=DEFAULT_IWAE_SAMPLES,
                        metavar="K", help="importance samples per image for the NLL bound "
                                          f"(default {DEFAULT_IWAE_SAMPLES})")
    parser.add_argument("--iwae-chunk", type=cli.bounded_int(1, MAX_IWAE_SAMPLES), default=None,
                        metavar="S",
                        help="IWAE samples per decoder call (default: about "
                             f"{DECODES_PER_CALL} decoded images per call)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=DEFAULT_BATCH_SIZE,
                        help=f"images per batch, split over the devices (default "
                             f"{DEFAULT_BATCH_SIZE})")
    parser.add_argument("--devices", type=cli.positive_int, default=None, metavar="N",
                        help="use the first N devices (default: all)")
    cli.add_distributed_flags(parser)
    cli.add_binarize_flags(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")
    parser.set_defaults(progress=None)
    return parser


def command(args: argparse.Namespace) -> None:
    model, variables, _ = cli.load_model(args)
    cli.apply_run_defaults(args)
    images, _ = load_split(args.dataset, args.split, args.data_dir, download=args.download)
    main = is_main_process()  # prints; every process computes
    progress = (sys.stderr.isatty() if args.progress is None else args.progress) and main
    result = evaluate_model(model, variables, images, seed=args.seed,
                            iwae_samples=args.iwae_samples, batch_size=args.batch_size,
                            chunk_size=args.iwae_chunk,
                            binarize_mode=cli.chosen_binarize_mode(args), progress=progress,
                            parallel=DataParallel.create(args.devices))
    result.update(workdir=os.path.abspath(args.workdir) if args.workdir else None,
                  pretrained=args.pretrained, dataset=args.dataset, split=args.split)
    if main:
        print(json.dumps(result, allow_nan=False) if args.json else format_summary(result))


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
