"""Adds a trained run to the package's pretrained models (vae_jax/pretrained/NAME).

    python scripts/make_pretrained.py NAME --workdir RUN --command "python train.py ..." \
        --hardware "2-core Intel Xeon CPU" --wall-time "3 min 41 s" \
        --description "..." [--results results.json] [--likelihood k5000.json]

Saves the newest checkpoint's variables with `save_variables` (digests included), the run's
config.json without its machine-specific data directory, and model_card.json: the
description, the command, hardware and wall time, the results given (e.g. a
`vae-jax-evaluate --json` output), the likelihood given (the same with `--iwae-samples
5000`, an hour's evaluation on a CPU) and the fingerprint: the negative ELBO on
`fingerprint_images()` with key 0, which tests/test_pretrained.py recomputes.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vae_jax import load_model, save_variables  # noqa: E402
from vae_jax.checkpoints.workdir import LOCK_FILE  # noqa: E402
from vae_jax.pretrained import CARD_FILE, DIRECTORY  # noqa: E402
from vae_jax.pretrained.fingerprint import fingerprint  # noqa: E402

RESULT_KEYS = ("neg_elbo", "neg_elbo_stderr", "reconstruction", "kl", "nll_iwae",
               "nll_iwae_stderr", "iwae_samples", "active_units", "num_images", "dataset",
               "split", "binarize", "seed")


def read_results(path: str | None) -> dict:
    """The RESULT_KEYS of a `vae-jax-evaluate --json` output ({} without one)."""
    if not path:
        return {}
    with open(path) as file:
        return {key: value for key, value in json.load(file).items() if key in RESULT_KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--hardware", required=True)
    parser.add_argument("--wall-time", required=True)
    parser.add_argument("--description", required=True)
    parser.add_argument("--results", help="a JSON file of results (vae-jax-evaluate --json)")
    parser.add_argument("--likelihood", help="the same with --iwae-samples 5000")
    args = parser.parse_args()
    model, variables, config = load_model(args.workdir)
    config = {key: value for key, value in config.items() if key != "data_dir"}
    target = os.path.join(DIRECTORY, args.name)
    save_variables(target, variables, config)
    lock = os.path.join(target, LOCK_FILE)  # the writer's lock: nothing to ship
    if os.path.exists(lock):
        os.remove(lock)
    card = {"description": args.description, "command": args.command,
            "hardware": args.hardware, "wall_time": args.wall_time,
            "results": read_results(args.results)}
    if config.get("init_from"):  # fine-tuned: the card says from what
        card["started_from"] = {"source": config["init_from"],
                                "digest": config.get("init_from_digest")}
    if args.likelihood:
        card["likelihood"] = read_results(args.likelihood)
    card["fingerprint"] = fingerprint(model, variables, config.get("binarize", "none"))
    with open(os.path.join(target, CARD_FILE), "w") as file:
        json.dump(card, file, indent=2)
        file.write("\n")
    print(target)


if __name__ == "__main__":
    main()
