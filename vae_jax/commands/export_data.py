"""`vae-jax-export-data --out FILE.npz [--dataset mnist] [--splits train,test]
[--overwrite]`: a tfds dataset's splits as one arrays file (`vae_jax.data.arrays`), for
`--dataset FILE.npz` on a machine without TensorFlow. Reads with tfds here (download as
usual, or --no-download); an existing FILE.npz is kept unless --overwrite."""

from __future__ import annotations

import argparse
import os
import sys

from vae_jax.commands import cli
from vae_jax.data import arrays
from vae_jax.data.input_pipeline import load_split
from vae_jax.runtime.errors import InputError


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(prog=cli.program_name("python -m vae_jax.commands.export_data"),
                               description="Write a tfds dataset's splits to one .npz file, "
                                           "readable with --dataset FILE.npz without "
                                           "TensorFlow.")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--dataset", default="mnist",
                        help="tfds dataset of 28x28 grayscale images (default: mnist)")
    parser.add_argument("--splits", default="train,test",
                        help="comma-separated split names to write, each stored under its "
                             "name (default: train,test)")
    parser.add_argument("--data-dir", default=None,
                        help="tfds data directory (default: $TFDS_DATA_DIR, else tfds' own)")
    parser.add_argument("--no-download", dest="download", action="store_false",
                        help="fail at once if the dataset is not in the data directory")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it exists (it is replaced only once the new "
                             "file is whole)")
    return parser


def split_names(text: str) -> list[str]:
    """The names of --splits: plain split names, each once (a slice would be stored under
    a name that no longer says it)."""
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if not name.isidentifier():
            raise InputError(f"--splits {text}: {name!r} is not a plain split name (write "
                             "e.g. train,test)")
    if len(set(names)) != len(names):
        raise InputError(f"--splits {text}: a split is named twice")
    return names


def check_out(out: str, overwrite: bool) -> None:
    if not arrays.is_arrays_file(out):
        raise InputError(f"--out {out}: give a file ending in {arrays.SUFFIX}")
    if os.path.isdir(out):
        raise InputError(f"--out {out} is a directory; give the {arrays.SUFFIX} file to write, "
                         f"e.g. {os.path.join(out, 'mnist' + arrays.SUFFIX)}")
    if os.path.exists(out) and not overwrite:
        raise InputError(f"--out {out} exists; pass --overwrite to replace it")
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise InputError(f"--out {out}: {directory} is not a directory")
    if not os.access(directory, os.W_OK):
        raise InputError(f"--out {out}: cannot write in {directory}")


def command(args: argparse.Namespace) -> None:
    names = split_names(args.splits)
    check_out(args.out, args.overwrite)
    if arrays.is_arrays_file(args.dataset):
        raise InputError(f"--dataset {args.dataset}: give a tfds dataset to export")
    splits = {name: load_split(args.dataset, name, args.data_dir, download=args.download)
              for name in names}
    arrays.save(args.out, splits)
    counts = ", ".join(f"{name} {len(images):,}" for name, (images, _) in splits.items())
    print(f"{args.out}: {args.dataset} ({counts} images), "
          f"{os.path.getsize(args.out) / 2**20:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
