"""Regenerates tests/data/mnist_test_first500.npz and tests/data/pretrained_first500.json:
real MNIST test digits for the tests, and what each shipped model gives on them.

    TFDS_DATA_DIR=/path/with/mnist python scripts/make_test_digits.py

The first COUNT digits of MNIST's test split as an arrays file (`vae_jax.data.arrays`, about
80 KB), so that the shipped models' numbers are checked on real digits on every machine, not
only where the whole dataset is prepared; and, for each model in `vae_jax.pretrained`, its
single-sample negative ELBO on them with its card's seed and binarization (batch 100).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from vae_jax import pretrained
from vae_jax.data import arrays
from vae_jax.data.input_pipeline import load_split
from vae_jax.evaluation.elbo import neg_elbo

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
DIGITS = DATA / "mnist_test_first500.npz"
RECORDED = DATA / "pretrained_first500.json"
COUNT = 500
BATCH = 100


def model_numbers(name: str, images) -> dict:
    """`name`'s per-image averages on `images` (loss, reconstruction, kl), as its card's
    results were measured: the same seed, the same binarization."""
    model, variables, _ = pretrained.load(name)
    results = pretrained.card(name)["results"]
    averages = neg_elbo(model, variables, images, jax.random.key(results["seed"]),
                        batch_size=BATCH, binarize_mode=results["binarize"]).averages()
    return {key: round(float(value), 4) for key, value in averages.items()}


def main() -> None:
    images, labels = load_split("mnist", f"test[:{COUNT}]", download=False)
    arrays.save(str(DIGITS), {"test": (images, labels)})
    images, _ = arrays.load_split(str(DIGITS), "test")  # what the tests will read
    recorded = {name: model_numbers(name, images) for name in pretrained.names()}
    RECORDED.write_text(json.dumps(recorded, indent=2) + "\n")
    print(f"{DIGITS} ({COUNT} digits), {RECORDED}: {recorded}")


if __name__ == "__main__":
    main()
