"""Pooling `vae-jax-evaluate --json` results over disjoint parts of a split into one
(`vae-jax-pool-evaluations`).

K = 5000 importance samples take hours for the 10,000 MNIST test images on a CPU, so they
are easier to run in parts (`--split 'test[:1000]'`, `'test[1000:3000]'`, ... , each with its
own `--seed`, in turn or on several machines) and pool afterwards. The pooled means are the
image-weighted means of the parts; the pooled standard errors are exact, from each part's
mean, standard error (sample std / sqrt(n)) and size. Active units are not poolable (they
need the variance of E_q[z|x] over all images, which the parts do not carry): run
`vae-jax-evaluate` with a small `--iwae-samples` on the whole split for those.

The parts must come from the same run, dataset, K and binarization, and cover different
splits; the command cannot see whether two slices overlap, so that is the caller's part.
"""

from __future__ import annotations

import json
import math

import numpy as np

from vae_jax.checkpoints.workdir import refuse_json_constant
from vae_jax.evaluation.likelihood import format_bounds, model_source
from vae_jax.runtime.errors import INT32_MAX, InputError, is_positive_int

MEAN_AND_STDERR = (("neg_elbo", "neg_elbo_stderr"), ("nll_iwae", "nll_iwae_stderr"))
WEIGHTED_MEANS = ("reconstruction", "kl", "kl_per_dim")
MUST_AGREE = ("workdir", "dataset", "iwae_samples", "binarize", "z_dim")
MUST_AGREE_WHEN_GIVEN = ("pretrained",)  # a --pretrained name; older results lack it
TEXTS = ("workdir", "dataset", "binarize", "pretrained", "split")  # printed as they are


class PoolingError(InputError):
    """Parts that cannot be pooled, named in one line."""


def pooled_mean_and_stderr(means, stderrs, sizes) -> tuple[float, float | None]:
    """The mean and standard error (ddof=1) of the union of disjoint samples, each given by
    its mean, standard error (sample std / sqrt(n)) and size n. Each argument: (parts,)."""
    stderrs = [np.nan if value is None else value for value in stderrs]  # None: one image
    means, stderrs, sizes = (np.asarray(values, np.float64) for values in (means, stderrs, sizes))
    total = sizes.sum()
    mean = float(np.sum(sizes * means) / total)
    if total < 2:
        return mean, None
    within = np.sum(np.where(sizes > 1, stderrs**2 * sizes * (sizes - 1), 0.0))
    between = np.sum(sizes * (means - mean) ** 2)
    return mean, float(math.sqrt((within + between) / (total - 1) / total))


NEEDED = MUST_AGREE + sum(MEAN_AND_STDERR, ()) + WEIGHTED_MEANS + (
    "split", "num_images", "seed", "seconds_iwae", "seconds")


def pool(parts: list[dict], names: list[str] | None = None) -> dict:
    """One result for the union of the parts' images (dicts as `evaluate --json` prints).
    `names` (e.g. the files they came from) name the parts in errors."""
    if not parts:
        raise PoolingError("no results to pool")
    names = names or [f"result {index + 1}" for index in range(len(parts))]
    for part, name in zip(parts, names):
        check_part(part, name)
    for key in MUST_AGREE + MUST_AGREE_WHEN_GIVEN:
        values = sorted({str(part.get(key)) for part in parts})
        if len(values) > 1:
            raise PoolingError(f"the results disagree on {key}: {', '.join(values)}")
    splits = [part["split"] for part in parts]
    repeated = sorted({split for split in splits if splits.count(split) > 1})
    if repeated:
        raise PoolingError(f"split {repeated[0]!r} appears more than once")

    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below
        pooled = _pooled(parts)
    for key, value in pooled.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise PoolingError(f"the pooled {key} overflows: the parts' values are too large "
                               f"to be per-image nats or seconds")
    return pooled


def _pooled(parts: list[dict]) -> dict:
    sizes = np.array([part["num_images"] for part in parts], np.float64)
    pooled = {key: parts[0].get(key) for key in MUST_AGREE + MUST_AGREE_WHEN_GIVEN}
    for mean_key, stderr_key in MEAN_AND_STDERR:
        pooled[mean_key], pooled[stderr_key] = pooled_mean_and_stderr(
            [part[mean_key] for part in parts], [part[stderr_key] for part in parts], sizes)
    for key in WEIGHTED_MEANS:
        values = np.array([part[key] for part in parts], np.float64)
        mean = np.tensordot(sizes, values, axes=1) / sizes.sum()
        pooled[key] = mean.tolist() if mean.ndim else float(mean)
    seconds_iwae = float(sum(part["seconds_iwae"] for part in parts))
    pooled.update(
        active_units=None,  # not poolable: see the module docstring
        num_images=int(sizes.sum()), splits=[part["split"] for part in parts],
        seeds=[part["seed"] for part in parts],
        seconds_iwae=seconds_iwae,
        iwae_decodes_per_sec=float(sizes.sum() * pooled["iwae_samples"] / seconds_iwae),
        seconds=float(sum(part["seconds"] for part in parts)))
    return pooled


def check_part(part: dict, name: str) -> None:
    """Raises PoolingError naming `name` and the field unless `part` has every field that
    pooling reads, each of the type and range `evaluate --json` writes."""
    for key in NEEDED:
        if key not in part:
            raise PoolingError(f"{name} has no {key!r}: is it the output of "
                               "`python -m vae_jax.commands.evaluate --json`?")

    def refuse(key, expected):
        raise PoolingError(f"{name}: {key!r} must be {expected}, got {part[key]!r:.60}")

    for key in ("num_images", "z_dim", "iwae_samples"):
        if not is_positive_int(part[key]) or part[key] > INT32_MAX:
            refuse(key, f"a positive integer up to {INT32_MAX:,}")
    for key in ("neg_elbo", "nll_iwae", "reconstruction", "kl"):
        if not _is_finite(part[key]):
            refuse(key, "a finite number")
    for key in ("neg_elbo_stderr", "nll_iwae_stderr"):  # none for a single image
        value = part[key]
        undefined = value is None or (part["num_images"] == 1 and isinstance(value, float)
                                      and math.isnan(value))
        if not (undefined or (_is_finite(value) and value >= 0)):
            refuse(key, "a non-negative number or null")
    for key in ("seconds_iwae", "seconds"):
        if not (_is_finite(part[key]) and part[key] > 0):
            refuse(key, "a positive number of seconds")
    per_dim = part["kl_per_dim"]
    if not (isinstance(per_dim, list) and len(per_dim) == part["z_dim"]
            and all(_is_finite(value) for value in per_dim)):
        refuse("kl_per_dim", f"a list of {part['z_dim']} numbers (z_dim)")
    if not isinstance(part["split"], str) or not part["split"]:
        refuse("split", "a split such as 'test[:1000]'")
    if not (isinstance(part["seed"], int) and not isinstance(part["seed"], bool)):
        refuse("seed", "an integer")
    for key in TEXTS:
        if part.get(key) is not None and not (isinstance(part[key], str)
                                              and part[key].isprintable()):
            refuse(key, "printable text")


def _is_finite(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def format_summary(pooled: dict) -> str:
    hours = pooled["seconds"] / 3600
    return "\n".join([
        f"{pooled['dataset']} {' + '.join(pooled['splits'])}: {pooled['num_images']} images, "
        f"binarize {pooled['binarize']}, from {model_source(pooled)}",
        *format_bounds(pooled),
        f"  time {pooled['seconds']:.0f} s in all ({hours:.2f} h; IWAE "
        f"{pooled['iwae_decodes_per_sec']:.0f} decodes/s)",
    ])


def load_part(path: str) -> dict:
    try:
        with open(path) as file:
            part = json.load(file, parse_constant=refuse_json_constant)
    except OSError as error:
        raise PoolingError(f"cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise PoolingError(f"{path} is not JSON ({error.msg}, line {error.lineno}): "
                           "was its evaluation cut short?") from None
    except (UnicodeDecodeError, ValueError):  # a binary file; NaN (not JSON)
        raise PoolingError(f"{path} is not a JSON text file: is it the output of "
                           "`python -m vae_jax.commands.evaluate --json`?") from None
    if not isinstance(part, dict):
        raise PoolingError(f"{path} holds no JSON object")
    return part
