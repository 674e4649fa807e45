"""The exercises, in the course's order: each one's name, signature and contract."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Exercise:
    """One function a learner writes: `signature` as they call it, `contract` what it takes
    and returns (a phrase that completes a hint)."""

    name: str
    signature: str
    contract: str


EXERCISES: tuple[Exercise, ...] = (
    Exercise("split", "split(encoding)",
             "it takes the encoder's (B, 2*z_dim) output and returns (mean, stddev), each "
             "(B, z_dim)"),
    Exercise("reparameterize", "reparameterize(key, mean, stddev)",
             "it takes a PRNG key and mean and stddev, each (B, z_dim), and returns one "
             "sample z of the same shape"),
    Exercise("kl", "kl(mean, stddev)",
             "it takes mean and stddev, each (B, z_dim), and returns one KL per image, (B,)"),
    Exercise("reconstruction", "reconstruction(logits, images)",
             "it takes logits and images, each (B, 28, 28, 1), and returns one binary "
             "cross-entropy per image, (B,)"),
    Exercise("loss", "loss(logits, images, mean, stddev)",
             "it returns the batch's loss, one number: reconstruction plus KL, summed over "
             "the images"),
    Exercise("train_step", "train_step(state, images)",
             "it takes a TrainState and a (B, 28, 28, 1) batch and returns (new_state, "
             "loss)"),
    Exercise("sample", "sample(key, decode, num, z_dim)",
             "it returns `num` images (num, 28, 28, 1) in [0, 1], decoded from z ~ N(0, I)"),
    Exercise("iwae", "iwae(log_weights)",
             "it takes (K, B) log importance weights and returns one bound per image, (B,)"),
)

_BY_NAME = {exercise.name: exercise for exercise in EXERCISES}


def names() -> tuple[str, ...]:
    """The exercises' names, in the course's order."""
    return tuple(_BY_NAME)


def exercise(name: str) -> Exercise:
    """The exercise called `name`; ValueError naming the known ones otherwise."""
    if name not in _BY_NAME:
        raise ValueError(f"no exercise called {name!r}; the exercises are "
                         f"{', '.join(_BY_NAME)}")
    return _BY_NAME[name]
