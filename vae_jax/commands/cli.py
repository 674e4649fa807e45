"""The command lines' one skeleton: flags, one-line errors and exit codes.

Every command (`python train.py`, `python -m vae_jax.commands.evaluate`, ..., or the installed
`vae-jax-*` scripts) is a `main(argv) -> int` that calls `run(parser, body, argv)`:

* a bad flag is one line (`PROG: error: argument --epochs: must be positive, got -1`) and
  exit code 2, without argparse's usage block;
* a command that computes with JAX (it has `--platform`), run from the command line
  (`argv` None), first re-executes itself with huge pages for XLA's large buffers where
  that helps (`vae_jax.runtime.hugepages`);
* `--platform`, where the command has it, is applied before any computation;
* a `vae_jax.runtime.errors.InputError` from the body is one line, `PROG: error: ...`, and exit code
  2, and so is an `OSError` (a full disk, an unwritable file); a `vae_jax.runtime.errors.Stopped`
  run is one line, `PROG: ...`, and its own exit code; Ctrl-C is `PROG: interrupted` and
  exit code 130;
* a warning (a damaged checkpoint set aside, say) is one line, `PROG: warning: ...`.

The flags that several commands share are defined here once (`add_platform_flag`,
`add_model_flags` with `load_model`, `add_binarize_flags`), and `add_config_flags` derives a
flag from each field of a settings dataclass such as `vae_jax.training.config.TrainConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import typing
import warnings
from typing import Any, Callable, Literal

from vae_jax import pretrained
from vae_jax.checkpoints import saved_model
from vae_jax.checkpoints.config_file import read_config_file
from vae_jax.checkpoints.workdir import require_writable
from vae_jax.commands.launch import (  # noqa: F401 - the commands' prog
    program_name,
    report_interrupted,
    version_line,
)
from vae_jax.model.binarize import BINARIZE_MODES
from vae_jax.runtime import distributed, hugepages, interrupts, platforms
from vae_jax.runtime.errors import NON_NEGATIVE, InputError, Stopped, first_line, is_non_negative
from vae_jax.training.config import MAX_SEED, flag_name


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag in one line (and exit code 2), without the usage block; every
    command answers `--version`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=version_line(self.prog),
                          help="print the installed vae-jax's version and exit")

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


_A_NUMBER = {int: "an int", float: "a float"}


def checked_number(kind: type, accept: Callable[[Any], bool], requirement: str):
    """An argparse type: `kind(text)` (int or float), refused with "`requirement`, got
    TEXT" unless `accept(value)`."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {_A_NUMBER[kind]}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{requirement}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def positive(kind: type):
    """An argparse type: `kind(text)`, refused unless > 0."""
    return checked_number(kind, lambda value: value > 0, "must be positive")


def non_negative(kind: type):
    """An argparse type: `kind(text)`, refused unless finite and >= 0."""
    return checked_number(kind, is_non_negative, NON_NEGATIVE)


def bounded_int(low: int, high: int):
    """An argparse type: an int in low..high (both included)."""
    return checked_number(int, lambda value: low <= value <= high, f"must be in {low}..{high}")


positive_int = positive(int)
seed = bounded_int(0, MAX_SEED)
non_negative_int = non_negative(int)


def run(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int | None],
        argv: list[str] | None = None, *,
        before_platform: Callable[[argparse.Namespace], None] | None = None) -> int:
    """Parses `argv`, applies `--platform`, runs `body(args)` and returns the exit code
    (`body`'s, or 0), turning known errors into one line on stderr (see the module
    docstring). `before_platform(args)` runs first, for what must precede JAX's start."""
    if argv is None:  # the process's own command line, not Python's call
        interrupts.install()
    args = parser.parse_args(argv)
    if argv is None and _computes(args):
        hugepages.relaunch_with_huge_pages()
    previous_format = warnings.formatwarning
    warnings.formatwarning = functools.partial(_warning_line, parser.prog)
    try:
        return _run_body(parser, body, args, before_platform)
    finally:
        warnings.formatwarning = previous_format


def _warning_line(prog, message, category, filename, lineno, line=None) -> str:
    """A warning as one line, `PROG: warning: ...` (not Python's two, with a source line)."""
    return f"{prog}: warning: {first_line(message)}\n"


def _computes(args: argparse.Namespace) -> bool:
    """Whether the command computes with JAX: the commands that do have `--platform`."""
    return getattr(args, "platform", None) is not None


def _run_body(parser, body, args, before_platform) -> int:
    try:
        if before_platform is not None:
            before_platform(args)
        if _computes(args):
            platforms.select_platform(
                args.platform, before_start=lambda: start_distributed(args, parser.prog))
        return body(args) or 0
    except KeyboardInterrupt:  # Ctrl-C outside training (which saves a checkpoint first)
        return report_interrupted(parser.prog)
    except Exception as error:
        if interrupts.arrived():  # what an interrupted import or callback raised instead
            return report_interrupted(parser.prog)
        code = _report_known_error(parser.prog, error)
        if code is None:
            raise
        return code


def _report_known_error(prog: str, error: Exception) -> int | None:
    """A known error as one line on stderr, and its exit code; None for any other."""
    if isinstance(error, InputError):
        print(f"{prog}: error: {first_line(error)}", file=sys.stderr)
        return 2
    if isinstance(error, Stopped):
        print(f"{prog}: {first_line(error)}", file=sys.stderr)
        return error.exit_code
    if isinstance(error, OSError):  # the environment: a full disk, an unwritable file
        where = f": {error.filename}" if getattr(error, "filename", None) else ""
        print(f"{prog}: error: {error.strerror or first_line(error)}{where}", file=sys.stderr)
        return 2
    if distributed.is_lost_peer(error):
        distributed.exit_now(prog, f"another process of the run stopped or was killed "
                                   f"(a collective failed: {first_line(error)[:160]}); "
                                   f"stopping this one too")
    return None


def add_platform_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--platform", choices=platforms.PLATFORMS, default="auto",
                        help="JAX backend (default: auto, the best one available)")


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a command that can run as one of many processes (`vae_jax.runtime.mesh`)."""
    group = parser.add_argument_group(
        "many processes", "jax.distributed starts by itself under SLURM and Open MPI; "
        "elsewhere give the three flags below to every process, or --distributed on a "
        "Cloud TPU pod")
    group.add_argument("--coordinator-address", metavar="HOST:PORT",
                       help="process 0's address, the same for every process")
    group.add_argument("--num-processes", type=positive_int, metavar="N")
    group.add_argument("--process-id", type=non_negative_int, metavar="I",
                       help="this process's number, 0 to N-1")
    group.add_argument("--distributed", action="store_true",
                       help="start jax.distributed and let JAX find the cluster")
    group.add_argument("--distributed-timeout", type=positive_int, default=120, metavar="S",
                       help="seconds to wait for every process to join (default 120)")


def start_distributed(args: argparse.Namespace, prog: str | None = None) -> None:
    if hasattr(args, "coordinator_address"):
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                               force=args.distributed, timeout_seconds=args.distributed_timeout,
                               prog=prog)


def add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per field of the dataclass `config_class`, from its type, default and
    metadata (see `vae_jax.training.config.setting`): `--field-name`, choices for a `Literal`,
    `--no-field-name` for a boolean that defaults to True."""
    types = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        meta, kind = field.metadata, types[field.name]
        default_text = meta.get("default_text") or "%(default)s"
        help_text = meta["help"].replace("%", "%%") + f" (default: {default_text})"
        if kind is bool:
            parser.add_argument(flag_name(field), dest=field.name, default=field.default,
                                action="store_false" if field.default else "store_true",
                                help=meta["help"].replace("%", "%%"))
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(flag_name(field), dest=field.name, default=field.default,
                                choices=typing.get_args(kind), help=help_text)
        else:
            base = next(t for t in typing.get_args(kind) or (kind,) if t is not type(None))
            parse = (bounded_int(0, meta["maximum"]) if meta.get("maximum") is not None
                     else positive(base) if meta.get("positive")
                     else non_negative(base) if meta.get("non_negative") else base)
            parser.add_argument(flag_name(field), dest=field.name, default=field.default,
                                type=parse, metavar=meta.get("metavar"), help=help_text)


def config_from_args(args: argparse.Namespace, config_class: type) -> Any:
    """The `config_class` instance that the flags of `add_config_flags` describe."""
    return config_class(**{field.name: getattr(args, field.name)
                           for field in dataclasses.fields(config_class)})


def add_model_flags(parser: argparse.ArgumentParser, data: bool = True) -> None:
    """--workdir (a trained run or saved variables) or --pretrained (a model that ships with
    the package), --platform, and with `data` the dataset flags of a command that reads
    images."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a training run (or a directory made by "
                                          "save_variables)")
    source.add_argument("--pretrained", choices=pretrained.names(), metavar="NAME",
                        help="a model that ships with the package instead: "
                             f"{', '.join(pretrained.names())} (vae_jax.pretrained)")
    add_platform_flag(parser)
    if data:
        parser.add_argument("--dataset", default=None,
                            help="tfds dataset of 28x28 grayscale images, or an arrays file "
                                 "FILE.npz (default: the one the run was trained on, else "
                                 "mnist)")
        parser.add_argument("--data-dir", default=None,
                            help="tfds data directory (default: the run's, where it exists, "
                                 "else $TFDS_DATA_DIR or tfds' own)")
        parser.add_argument("--split", default=None,
                            help="tfds split, e.g. 'test' or 'test[:500]' (default: the run's "
                                 "test split, else test)")
        parser.add_argument("--no-download", dest="download", action="store_false",
                            help="fail at once if the dataset is not in the data directory")


def model_directory(args: argparse.Namespace) -> str:
    """Where the model of `add_model_flags` is: --workdir, or the --pretrained model's."""
    return args.workdir if args.workdir else pretrained.path(args.pretrained)


def output_directory(args: argparse.Namespace) -> str:
    """Where a command writes by default: --workdir, or the current directory for a
    --pretrained model (never into the installed package)."""
    return args.workdir if args.workdir else os.getcwd()


def require_output_writable(args: argparse.Namespace) -> None:
    """Raises InputError naming the right flag when `output_directory(args)` is not writable:
    --workdir's, or the current directory's that --pretrained writes into."""
    if args.workdir:
        require_writable(args.workdir)
        return
    here = os.getcwd()
    if not os.access(here, os.W_OK | os.X_OK):
        raise InputError(f"--pretrained {args.pretrained} writes into the current directory, "
                         f"and {here} is not writable: cd to a folder you can write to")


def load_model(args: argparse.Namespace):
    """(model, variables, config) of --workdir or --pretrained."""
    return saved_model.load_model(model_directory(args))


def apply_run_defaults(args: argparse.Namespace) -> None:
    """Fills --dataset, --split and --data-dir that were not given from the run in
    --workdir (what it was trained and tested on), else mnist's test split."""
    run = read_config_file(model_directory(args))
    args.dataset = args.dataset or run.get("dataset") or "mnist"
    args.split = args.split or run.get("test_split") or "test"
    if args.data_dir is None and isinstance(run.get("data_dir"), str) and os.path.isdir(
            run["data_dir"]):
        args.data_dir = run["data_dir"]


def add_seed_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=seed, default=0,
                        help=f"every random draw derives from it, 0 to {MAX_SEED} (default 0)")


def add_binarize_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--binarize", choices=BINARIZE_MODES, default=None,
                        help="none: grayscale images, as the course trains; dynamic: one "
                             "Bernoulli(pixel) draw per image, comparable with the literature "
                             "(default: what the run was trained with, else none)")
    add_seed_flag(parser)


def chosen_binarize_mode(args: argparse.Namespace) -> str:
    """--binarize, else what the run in --workdir was trained with, else "none"."""
    return args.binarize or saved_model.training_binarize(model_directory(args)) or "none"
