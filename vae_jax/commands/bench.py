"""`vae-jax-bench [--mode step|epoch|iwae] [--vs-torch] [--json]`: the benchmarks' command line.

Times a computation as the commands run it, after compilation and warm-up:

* `step` (default): `vae_jax.training.steps.train_step`, jitted as `train.py` runs it
  (`make_train_step()`, state donated), on random images in [0, 1];
* `epoch`: the `lax.scan` epoch (`make_train_epoch`, `train.py --epoch-mode scan`) over
  `--num-images` random images;
  both with train.py's `--objective` and `--objective-samples` (the ELBO by default);
* `iwae`: `vae-jax-evaluate`'s IWAE pass over one batch, with its default chunking, in
  decoded images per second, and the time K = 5000 on the 10,000 test images would take.

It reports the median milliseconds per call, images (or decodes) per second, compile
seconds, the peak memory (the host's resident-set high-water mark on CPU; the device's
`peak_bytes_in_use` on a GPU/TPU when JAX reports it), and the floor
(`vae_jax.benchmarks.roofline`): XLA's FLOP count of a call against a large matmul's rate.
`--breakdown` profiles the step per layer, pass and op (`vae_jax.benchmarks.op_profile`).
Run as a command, it re-executes itself with huge pages as every command does
(`vae_jax.runtime.hugepages`), so it measures what they do.

`--vs-torch` also times the PyTorch original (the course notebook's model, BCELoss(sum) +
KL, Adam 2e-3, `rsample`) on the same batch, or with `--mode epoch` the same epoch
(`TorchRunner`), with as many threads as XLA uses, in the same process, alternating JAX and
PyTorch rounds so that load from elsewhere hits both alike.
torch is imported only then (`pip install torch==2.13.0`).

Examples:
    vae-jax-bench                          # batch 1024, summary line
    vae-jax-bench --vs-torch --rounds 5    # ratio against PyTorch
    vae-jax-bench --breakdown              # where the step's time goes
    vae-jax-bench --mode iwae              # the IWAE decoder's throughput
    vae-jax-bench --implementation all     # each convolution implementation
    vae-jax-bench --objective dreg --objective-samples 5   # an importance-weighted step
    vae-jax-bench --batch-size 8 --steps 2 --json
"""

from __future__ import annotations

import argparse
import json
import sys

from vae_jax.benchmarks.roofline import MATMUL_SIZE
from vae_jax.benchmarks.runners import TORCH_HINT
from vae_jax.benchmarks.suite import MODES, format_summary, run
from vae_jax.commands import cli
from vae_jax.evaluation import elbo
from vae_jax.kernels.convolutions import IMPLEMENTATIONS
from vae_jax.model.objectives import OBJECTIVES, Objective
from vae_jax.runtime.errors import InputError
from vae_jax.training.config import TrainConfig


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(prog=cli.program_name("python -m vae_jax.commands.bench"),
                               description="Time the VAE's training step, scan epoch or "
                                           "IWAE decoder.")
    parser.add_argument("--mode", choices=MODES, default="step",
                        help="what to time: 'step', the training step (default); 'epoch', "
                             "the lax.scan epoch (train.py --epoch-mode scan) over --num-images "
                             "synthetic images; 'iwae', the IWAE evaluation's decoder "
                             "throughput, as vae-jax-evaluate runs it")
    parser.add_argument("--batch-size", type=cli.positive_int, default=None,
                        help=f"images per step (default {TrainConfig().batch_size}; in 'iwae' "
                             f"mode images per evaluation batch, default "
                             f"{elbo.DEFAULT_BATCH_SIZE})")
    parser.add_argument("--steps", type=cli.positive_int, default=10,
                        help="timed calls per round: steps, epochs or IWAE batches (default 10)")
    parser.add_argument("--rounds", type=cli.positive_int, default=None,
                        help="timing rounds of --steps steps; with --vs-torch JAX and PyTorch "
                             "alternate round by round (default 1, or 3 with --vs-torch)")
    parser.add_argument("--warmup", type=cli.non_negative_int, default=2,
                        help="untimed steps after compilation (default 2)")
    parser.add_argument("--implementation", choices=IMPLEMENTATIONS + ("all",), default="auto",
                        help="convolution implementation (vae_jax.kernels.convolutions); 'all' "
                             "times each")
    parser.add_argument("--devices", type=cli.positive_int, default=1, metavar="N",
                        help="split each batch over the first N devices, as train.py "
                             "--devices N does (default 1; fake CPU devices share the "
                             "same cores, so they show no speed-up)")
    cli.add_platform_flag(parser)
    parser.add_argument("--vs-torch", action="store_true",
                        help="also time the PyTorch original, interleaved, and print the ratio")
    parser.add_argument("--objective", choices=OBJECTIVES, default="elbo",
                        help="'step' and 'epoch' modes: the training objective, as train.py's "
                             "(default elbo, the course's)")
    parser.add_argument("--objective-samples", type=cli.positive_int, default=1, metavar="K",
                        help="K, the importance samples per image of iwae and dreg (default 1)")
    parser.add_argument("--num-images", type=cli.positive_int, default=60000,
                        help="'epoch' mode: synthetic training images (default 60000, MNIST's)")
    parser.add_argument("--iwae-samples", type=cli.positive_int, default=200, metavar="K",
                        help="'iwae' mode: samples per image in each timed call (default 200; "
                             "the throughput does not depend on it, the chunking is "
                             "vae-jax-evaluate's)")
    parser.add_argument("--breakdown", action="store_true",
                        help="'step' mode: also profile one step per layer, pass and op "
                             "(jax.profiler) and print where the time goes")
    parser.add_argument("--floor-size", type=cli.non_negative_int, default=MATMUL_SIZE,
                        metavar="N", help="measure the floor with N x N float32 matmuls "
                                          f"(default {MATMUL_SIZE}; 0 skips it)")
    cli.add_seed_flag(parser)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the summary lines")
    return parser


def prepare(args: argparse.Namespace) -> None:
    """What must happen before JAX starts: the mode's defaults, checking for torch."""
    if args.rounds is None:
        args.rounds = 3 if args.vs_torch else 1
    if args.batch_size is None:
        args.batch_size = (elbo.DEFAULT_BATCH_SIZE if args.mode == "iwae"
                           else TrainConfig().batch_size)
    if args.vs_torch and args.mode == "iwae":
        raise InputError("--vs-torch times training: use it with --mode step or epoch")
    if args.objective != "elbo" and args.mode == "iwae":
        raise InputError("--objective times training: use it with --mode step or epoch")
    if args.objective != "elbo" and args.vs_torch:
        raise InputError("--vs-torch times the course's ELBO step: leave --objective out")
    try:  # what the runners train (`JaxRunner`)
        args.training_objective = Objective(args.objective, args.objective_samples)
    except ValueError as error:
        raise InputError(str(error)) from None
    if args.breakdown and args.mode != "step":
        raise InputError("--breakdown profiles the training step: use it with --mode step")
    if args.vs_torch:
        try:
            import torch  # noqa: F401  (optional: only for --vs-torch)
        except ImportError:
            raise InputError(TORCH_HINT) from None


def command(args: argparse.Namespace) -> None:
    report = run(args)
    print(json.dumps(report) if args.json else "\n".join(format_summary(report)))


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv, before_platform=prepare)


if __name__ == "__main__":
    sys.exit(main())
