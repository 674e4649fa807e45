"""`python train.py` (also `vae-jax-train`): training's command line over
`vae_jax.training.loop.train_and_evaluate`; docs/guides/training.md lists the flags."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from vae_jax.checkpoints.workdir import CHECKPOINTS_DIR, METRICS_FILE, TENSORBOARD_DIR
from vae_jax.commands import cli
from vae_jax.runtime.distributed import is_main_process
from vae_jax.runtime.errors import InputError
from vae_jax.training.config import TrainConfig
from vae_jax.training.loop import train_and_evaluate
from vae_jax.training.train_state import step_of
from vae_jax.training.writers import epoch_picture_names


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(
        prog=cli.program_name("train.py"),
        description="Train the DeepLearning.AI course's convolutional VAE.")
    cli.add_platform_flag(parser)
    cli.add_config_flags(parser, TrainConfig)
    cli.add_distributed_flags(parser)
    parser.add_argument("--workdir", default="runs/vae",
                        help="where metrics, pictures and checkpoints go; running again on "
                             "the same workdir resumes the run (default: runs/vae)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over instead of resuming the run in --workdir "
                             "(with --overwrite when there is one to delete)")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --fresh: delete the earlier run's checkpoints and metrics")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")
    return parser


def check_fresh(workdir: str, fresh: bool, overwrite: bool) -> None:
    """--fresh deletes a run only with --overwrite."""
    if fresh and not overwrite and any(
            os.path.exists(os.path.join(workdir, name))
            for name in (CHECKPOINTS_DIR, METRICS_FILE)):
        raise InputError(f"--fresh: --workdir {workdir} holds a run; add --overwrite to delete "
                         "it and start over, or leave out --fresh to resume it")


def command(args: argparse.Namespace) -> None:
    check_fresh(args.workdir, args.fresh, args.overwrite)
    config = cli.config_from_args(args, TrainConfig)
    state = train_and_evaluate(config, args.workdir, progress=args.progress, fresh=args.fresh)
    if is_main_process():
        print(closing_lines(args.workdir, config.epochs, step_of(state)))


def closing_lines(workdir: str, epochs: int, step: int) -> str:
    """The run's last two lines: what it wrote where, and the commands to run next."""
    folder = shlex.quote(workdir)
    reconstructions, samples = epoch_picture_names(epochs)
    return (f"wrote {workdir}: checkpoint at step {step}, {METRICS_FILE}, {reconstructions}, "
            f"{samples}, {TENSORBOARD_DIR}/\n"
            f"next: vae-jax-evaluate --workdir {folder}  |  vae-jax-explore --workdir {folder}")


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
