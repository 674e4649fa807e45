"""Regenerates tests/data/mnist_test_first500.npz and tests/data/pretrained_first500.json:
real MNIST test digits for the tests, and what each shipped model gives on them.

    TFDS_DATA_DIR=/path/with/mnist python scripts/make_test_digits.py

The first COUNT digits of MNIST's test split as an arrays file (`vae_jax.data.arrays`, about
80 KB), so that the shipped models' numbers are checked on real digits on every machine, not
only where the whole dataset is prepared; and, for each model in `vae_jax.pretrained`, its
single-sample negative ELBO on them with its card's seed and binarization (batch 100), and
for a model whose card records a K = 5000 bound, that bound on the first 100 of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from vae_jax import pretrained
from vae_jax.data import arrays
from vae_jax.data.input_pipeline import load_split
from vae_jax.evaluation.elbo import neg_elbo
from vae_jax.evaluation.likelihood import evaluate_model

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
DIGITS = DATA / "mnist_test_first500.npz"
RECORDED = DATA / "pretrained_first500.json"
COUNT = 500
BATCH = 100
LIKELIHOOD_IMAGES = 100  # K = 5000 on these: under a minute a model on a CPU


def model_numbers(name: str, images) -> dict:
    """`name`'s per-image averages on `images` (loss, reconstruction, kl), as its card's
    results were measured: the same seed, the same binarization."""
    model, variables, _ = pretrained.load(name)
    results = pretrained.card(name)["results"]
    averages = neg_elbo(model, variables, images, jax.random.key(results["seed"]),
                        batch_size=BATCH, binarize_mode=results["binarize"]).averages()
    return {key: round(float(value), 4) for key, value in averages.items()}


def likelihood_numbers(name: str, images) -> dict:
    """For a model whose card records a K = 5000 bound: its IWAE bound at the same K on the
    first LIKELIHOOD_IMAGES of `images`, with the card's seed and binarization."""
    model, variables, _ = pretrained.load(name)
    card = pretrained.card(name)["likelihood"]
    result = evaluate_model(model, variables, images[:LIKELIHOOD_IMAGES], seed=card["seed"],
                            iwae_samples=card["iwae_samples"], binarize_mode=card["binarize"])
    return {key: round(float(result[key]), 4) for key in ("neg_elbo", "nll_iwae")}


def main() -> None:
    images, labels = load_split("mnist", f"test[:{COUNT}]", download=False)
    arrays.save(str(DIGITS), {"test": (images, labels)})
    images, _ = arrays.load_split(str(DIGITS), "test")  # what the tests will read
    recorded = {name: model_numbers(name, images) for name in pretrained.names()}
    for name in pretrained.names():
        if "likelihood" in pretrained.card(name):
            recorded[name]["likelihood"] = likelihood_numbers(name, images)
    RECORDED.write_text(json.dumps(recorded, indent=2) + "\n")
    print(f"{DIGITS} ({COUNT} digits), {RECORDED}: {recorded}")


if __name__ == "__main__":
    main()
