"""`vae-jax-pool-evaluations PART.json [PART.json ...] [--json]`: evaluations of disjoint
parts of a split pooled into one (`vae_jax.evaluation.pooling`)."""

from __future__ import annotations

import argparse
import json
import sys

from vae_jax.commands import cli
from vae_jax.evaluation.pooling import format_summary, load_part, pool


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(
        prog=cli.program_name("python -m vae_jax.commands.pool_evaluations"),
        description="Pool `vae-jax-evaluate --json` results over disjoint parts of a split.")
    parser.add_argument("results", nargs="+", metavar="PART.json",
                        help="outputs of `vae-jax-evaluate --json`")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def command(args: argparse.Namespace) -> None:
    pooled = pool([load_part(path) for path in args.results], names=args.results)
    print(json.dumps(pooled, allow_nan=False) if args.json else format_summary(pooled))


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
