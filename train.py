#!/usr/bin/env python
"""Train the course's VAE: `python train.py [--platform gpu] [--epochs 10] [--workdir runs/vae]`.

A thin command line over `vae_jax.train.train_and_evaluate`; see README.md for the flags.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tfds' TensorFlow: errors only


def parse_args(argv=None):
    from vae_jax.cli import OneLineParser, positive
    from vae_jax.platforms import PLATFORMS
    from vae_jax.train import BINARIZE_MODES, EPOCH_MODES, TrainConfig
    defaults = TrainConfig()
    parser = OneLineParser(description="Train the DeepLearning.AI course's convolutional VAE.")
    parser.add_argument("--platform", choices=PLATFORMS, default="auto",
                        help="JAX backend (default: auto, the best one available)")
    parser.add_argument("--epochs", type=positive(int), default=defaults.epochs)
    parser.add_argument("--batch-size", type=positive(int), default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=positive(float), default=defaults.learning_rate)
    parser.add_argument("--z-dim", type=positive(int), default=defaults.z_dim)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--dataset", default=defaults.dataset,
                        help="a tfds dataset of 28x28 grayscale images (mnist, fashion_mnist, "
                             "kmnist, ...)")
    parser.add_argument("--data-dir", default=None,
                        help="tfds data directory (default: $TFDS_DATA_DIR or tfds' own)")
    parser.add_argument("--no-download", dest="download", action="store_false",
                        help="fail at once if the dataset is not in the data directory")
    parser.add_argument("--workdir", default="runs/vae",
                        help="where metrics, pictures and variables go (default: runs/vae)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over instead of resuming the run in --workdir "
                             "(with --overwrite when there is one to delete)")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --fresh: delete the earlier run's checkpoints and metrics")
    parser.add_argument("--checkpoint-every", type=positive(int), default=None, metavar="N",
                        help="also save a checkpoint every N steps (default: at epoch ends; "
                             "with --epoch-mode scan only at epoch ends)")
    parser.add_argument("--keep", type=positive(int), default=3,
                        help="checkpoints to keep (default 3)")
    parser.add_argument("--train-split", default=defaults.train_split,
                        help="tfds split to train on, e.g. 'train[:10%%]'")
    parser.add_argument("--test-split", default=defaults.test_split)
    parser.add_argument("--binarize", choices=BINARIZE_MODES, default=defaults.binarize,
                        help="dynamic: train and test on Bernoulli(pixel) images, redrawn "
                             "every batch, as the literature does (default: none, grayscale "
                             "targets as in the course)")
    parser.add_argument("--epoch-mode", choices=EPOCH_MODES, default=defaults.epoch_mode,
                        help="steps: a jitted step per batch; scan: the epoch as one jitted "
                             "scan on the device; auto: steps on CPU, scan on GPU/TPU")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from vae_jax import platforms
    try:
        platforms.select_platform(args.platform)
    except platforms.PlatformError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    from vae_jax.input_pipeline import DatasetError
    from vae_jax.train import (ResumeMismatchError, TrainConfig, TrainingStopped,
                               train_and_evaluate)
    problem = check_workdir(args.workdir, args.fresh, args.overwrite)
    if problem:
        print(f"train.py: error: {problem}", file=sys.stderr)
        return 2
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        z_dim=args.z_dim, seed=args.seed, dataset=args.dataset, data_dir=args.data_dir,
        download=args.download, train_split=args.train_split, test_split=args.test_split,
        epoch_mode=args.epoch_mode, binarize=args.binarize, checkpoint_every=args.checkpoint_every or 0,
        keep=args.keep)
    try:
        train_and_evaluate(config, args.workdir, progress=args.progress, fresh=args.fresh)
    except (DatasetError, ResumeMismatchError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as error:
        print(f"train.py: {error}", file=sys.stderr)
        return error.exit_code
    return 0


def check_workdir(workdir: str, fresh: bool, overwrite: bool) -> str | None:
    """What is wrong with --workdir for this run (None when it is usable)."""
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        return f"--workdir {workdir}: {existing} is not a writable directory"
    holds_run = any(os.path.exists(os.path.join(workdir, name))
                    for name in ("checkpoints", "metrics.jsonl"))
    if fresh and holds_run and not overwrite:
        return (f"--fresh: --workdir {workdir} holds a run; add --overwrite to delete it "
                f"and start over, or leave out --fresh to resume it")
    return None


if __name__ == "__main__":
    sys.exit(main())
