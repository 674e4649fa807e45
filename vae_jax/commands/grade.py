"""`vae-jax-grade NOTEBOOK.ipynb [...] [--json]`: a class's exercise notebooks, each run in
its own fresh kernel and graded exercise by exercise (`vae_jax.exercises.grading`)."""

from __future__ import annotations

import argparse
import json
import sys

from vae_jax.commands import cli
from vae_jax.exercises import grading
from vae_jax.runtime.errors import InputError


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(
        prog=cli.program_name("python -m vae_jax.commands.grade"),
        description="Run each notebook in a fresh kernel and check the exercises it defines "
                    "(split, reparameterize, kl, ...); print one table, notebook by "
                    "exercise. The notebooks run in a temporary folder and are never "
                    "changed; grading runs their code, so grade only what you would run.")
    parser.add_argument("notebooks", nargs="+", metavar="NOTEBOOK.ipynb")
    parser.add_argument("--timeout", type=cli.positive(float), default=600, metavar="S",
                        help="seconds for each notebook's cells; a cell still running then "
                             "is stopped and the rest skipped (default 600)")
    parser.add_argument("--check-timeout", type=cli.positive(float), default=120,
                        metavar="S", help="seconds for each exercise's check (default 120)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object, for a gradebook")
    return parser


def command(args: argparse.Namespace) -> None:
    try:
        import nbclient  # noqa: F401
        import nbformat  # noqa: F401
    except ImportError:
        raise InputError("grading runs notebooks with nbclient and ipykernel: "
                         "pip install 'vae-jax[grade]'") from None
    grades = grading.grade(args.notebooks, time_limit=args.timeout,
                           check_time_limit=args.check_timeout,
                           log=None if args.json else lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps({"exercises": list(grading.names()),
                          "notebooks": [grade.as_dict() for grade in grades]}))
    else:
        print(grading.format_table(grades))


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
