"""`vae-jax-torch-port MODEL.pt --workdir DIR`: the course notebook's trained PyTorch VAE
(a state_dict saved with `torch.save`) as vae-jax variables (`vae_jax.interop.torch_port`)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from vae_jax.checkpoints.saved_model import check_variables_target, save_variables
from vae_jax.commands import cli
from vae_jax.interop.torch_port import (
    from_torch_state_dict,
    infer_z_dim,
    read_state_dict,
    to_numpy,
)
from vae_jax.runtime.errors import InputError, first_line


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(
        prog=cli.program_name("python -m vae_jax.commands.torch_port"),
        description="Convert the course notebook's trained PyTorch VAE (a state_dict saved "
                    "with torch.save) into a vae-jax checkpoint.")
    parser.add_argument("model", help="the .pt/.pth file written by torch.save")
    parser.add_argument("--workdir", required=True,
                        help="directory to write the vae-jax variables into")
    return parser


def command(args: argparse.Namespace) -> None:
    check_variables_target(args.workdir)  # before reading the file: fail fast
    state_dict = read_state_dict(args.model)
    try:
        z_dim = infer_z_dim(state_dict)
        conv1 = state_dict.get("encode.disc.0.0.weight")
        im_chan = (int(np.shape(to_numpy(conv1, "encode.disc.0.0.weight"))[1])
                   if conv1 is not None else 1)
        variables = from_torch_state_dict(state_dict, z_dim=z_dim, im_chan=im_chan)
    except (ValueError, IndexError) as error:
        raise InputError(f"{args.model}: {error}") from None
    config = {"z_dim": z_dim, "im_chan": im_chan}  # the model configuration, as training's
    try:
        save_variables(args.workdir, variables, config)
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - orbax raises many types for a failed write
        raise InputError(f"cannot write {args.workdir}: {type(error).__name__}: "
                         f"{first_line(error)}") from None
    count = sum(v.size for layer in variables["params"].values()
                for leaves in layer.values() for v in leaves.values())
    print(f"converted {args.model} (VAE(z_dim={z_dim}, im_chan={im_chan}), {count:,} "
          f"parameters) -> {args.workdir}")


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
