"""`vae-jax-explore --workdir RUN | --pretrained NAME [--port 7860] [--host 127.0.0.1]`.

Serves a local web page for a trained run (or saved variables): draw a digit or pick a test
image and see its posterior, move the latents and watch the decoder, walk between two
images, sample the prior (`vae_jax.explore`). Prints the address; Ctrl-C stops it. Needs the
`explore` extra: `pip install -e '.[explore]'`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from vae_jax.commands import cli
from vae_jax.data.input_pipeline import DatasetError, load_split
from vae_jax.explore import address
from vae_jax.explore.latent_space import LatentSpace
from vae_jax.runtime.errors import InputError, first_line

DEFAULT_HOST = "127.0.0.1"
MODULE_PROG = "python -m vae_jax.commands.explore"


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(prog=cli.program_name(MODULE_PROG),
                               description="Serve a local page to explore a trained VAE's "
                                           "latent space.")
    cli.add_model_flags(parser)
    parser.add_argument("--port", type=cli.bounded_int(1, 65535), default=None,
                        help="the port to serve on (default 7860)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"the address to bind (default {DEFAULT_HOST}: this machine only)")
    return parser


def import_page():
    """vae_jax.explore.page, or InputError naming the extra to install."""
    try:
        from vae_jax.explore import page
    except ImportError as error:
        raise InputError(f"the explorer needs the explore extra (gradio): pip install -e "
                         f"'.[explore]' ({first_line(error)})") from None
    return page


def test_images(args: argparse.Namespace):
    """(images, note): the test split the page offers, or (None, why not). A dataset or split
    named on the command line must load; the run's default may be missing (a warning)."""
    named = args.dataset is not None or args.split is not None
    cli.apply_run_defaults(args)
    try:
        images, _ = load_split(args.dataset, args.split, args.data_dir, download=args.download)
    except DatasetError as error:
        if named:
            raise
        warnings.warn(f"no test images, so only drawing on the page: {first_line(error)}")
        return None, f"{args.dataset} {args.split} could not be read"
    return images, None


def wait_for_ctrl_c(poll_seconds: float = 0.25) -> None:
    """Returns when Ctrl-C (SIGINT) arrives. A short sleep in a loop, not one blocking wait:
    the kernel may hand the signal to any of the server's threads, and Python runs its
    handler only when the main thread next wakes, which a wait on a lock never does."""
    try:
        while True:
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        return


def command(args: argparse.Namespace) -> None:
    page = import_page()
    port = args.port or address.DEFAULT_PORT
    address.check_address(args.host, port)  # before the seconds of loading
    exposure = address.exposure_warning(args.host, port)
    if exposure:
        warnings.warn(exposure)
    model, variables, _ = cli.load_model(args)
    images, note = test_images(args)
    space = LatentSpace(model, variables, images)
    space.warm_up()  # compiled before the address is printed: the first view answers at once
    where = os.path.abspath(cli.model_directory(args))
    run_name = args.pretrained or os.path.basename(where)
    site = page.build_page(space, run_name, note)
    url = page.serve(site, args.host, port)
    prog = cli.program_name(MODULE_PROG)
    print(f"{prog}: exploring {where} at {url} (Ctrl-C stops)", flush=True)
    wait_for_ctrl_c()
    site.close(verbose=False)
    print(f"{prog}: stopped", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv)


if __name__ == "__main__":
    sys.exit(main())
