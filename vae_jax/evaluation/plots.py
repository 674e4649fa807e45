"""Pictures of a trained VAE: training curves, interpolations, latent map, KL per dimension.

`make_plots` writes the four PNG files into a run's directory (`vae-jax-plots`, whose
docstring describes each); the `plot_*` functions draw one each, from arrays.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.patches import Patch

from vae_jax.checkpoints.metrics_file import read_metrics
from vae_jax.checkpoints.workdir import METRICS_FILE
from vae_jax.evaluation import elbo, grids, likelihood
from vae_jax.model import losses, metrics
from vae_jax.model.vae import VAE

# Pairs of digits to interpolate between, one row each.
DIGIT_PAIRS = ((0, 6), (1, 7), (2, 3), (4, 9), (5, 8), (3, 8), (7, 9), (1, 4))
INTERPOLATION_STEPS = 10


# Runs longer than this get a second panel without the first epochs, whose losses would
# otherwise set the scale and flatten the rest of the curve.
ZOOM_AFTER_EPOCHS = 20


def plot_training_curves(records: list[dict], path: str) -> None:
    """Train and test loss (negative ELBO per image, nats) against the epoch, and the test
    objective (minus the IWAE bound with the run's K) for runs trained with iwae or dreg.

    Past ZOOM_AFTER_EPOCHS epochs, a second panel shows the epochs after the first tenth.
    """
    panels = [records]
    if len(records) > ZOOM_AFTER_EPOCHS:
        panels.append(records[len(records) // 10:])
    figure = grids.figure(figsize=(6.5 * len(panels), 4.2))
    axes = figure.subplots(1, len(panels), squeeze=False)
    for axis, shown in zip(axes[0], panels):
        _plot_losses(axis, shown)
    axes[0][0].set_title("Training curves")
    if len(panels) > 1:
        axes[0][1].set_title(f"from epoch {panels[1][0]['epoch']}")
    grids.save_figure(figure, path)


# (metrics key, legend label, line style, whether its last value is written beside it)
CURVES = (("train_loss", "train (epoch mean, training mode)", "o-", False),
          ("test_loss", "test (after the epoch, eval mode)", "s-", True),
          ("test_objective", "test objective (minus the IWAE bound, the run's K)", "^-", True))


def _plot_losses(axis, records: list[dict]) -> None:
    epochs = [record["epoch"] for record in records]
    for key, label, style, annotated in CURVES:
        values = [value if isinstance(value := record.get(key), (int, float)) else None
                  for record in records]
        if not any(value is not None for value in values):
            continue
        axis.plot(epochs, values, style, label=label,
                  markersize=6 if len(epochs) <= ZOOM_AFTER_EPOCHS else 2)
        if annotated and values[-1] is not None:
            axis.annotate(f"{values[-1]:.1f}", (epochs[-1], values[-1]),
                          textcoords="offset points", xytext=(0, 8), ha="center")
    if records:
        axis.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        axis.legend()
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss per image (nats)")
    axis.grid(alpha=0.3)


def choose_pairs(labels: np.ndarray, rows: int = len(DIGIT_PAIRS)) -> list[tuple[int, int]]:
    """Indices of `rows` pairs of images: the first image of each digit in DIGIT_PAIRS
    (the next unused ones where the labels lack a digit)."""
    labels = np.asarray(labels)
    used: set[int] = set()

    def pick(digit: int) -> int:
        candidates = [int(i) for i in np.flatnonzero(labels == digit) if int(i) not in used]
        if not candidates:
            candidates = [i for i in range(len(labels)) if i not in used] or [0]
        used.add(candidates[0])
        return candidates[0]

    return [(pick(a), pick(b)) for a, b in DIGIT_PAIRS[:rows]]


def interpolate(start: np.ndarray, end: np.ndarray, steps: int) -> np.ndarray:
    """`steps` points evenly spaced on the segment from `start` to `end` (both included)."""
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return (1 - weights) * start[None] + weights * end[None]


def plot_interpolations(starts: np.ndarray, decoded: np.ndarray, ends: np.ndarray,
                        path: str, labels: list[tuple[int, int]] | None = None) -> None:
    """Rows of input | decoded interpolation (steps) | input.

    starts, ends: (rows, 28, 28, 1) images; decoded: (rows, steps, 28, 28, 1).
    """
    rows, steps = decoded.shape[:2]
    cells = np.concatenate([starts[:, None], decoded, ends[:, None]], axis=1)
    mosaic = grids.tile(cells.reshape((-1,) + cells.shape[2:]), columns=steps + 2)
    cell = starts.shape[1] + 2
    figure = grids.figure(figsize=(0.62 * (steps + 2) + 0.6, 0.62 * rows + 1.0))
    axis = figure.subplots()
    axis.imshow(mosaic, cmap="gray", vmin=0, vmax=1)
    names = ["input"] + [f"{t:.2g}" for t in np.linspace(0, 1, steps)] + ["input"]
    axis.set_xticks([cell * (i + 0.5) for i in range(steps + 2)], names, fontsize=7)
    if labels is not None:
        axis.set_yticks([cell * (i + 0.5) for i in range(rows)],
                        [f"{a}→{b}" for a, b in labels], fontsize=8)
    else:
        axis.set_yticks([])
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    for x in (cell, cell * (steps + 1)):
        axis.axvline(x - 0.5, color="tab:red", linewidth=1)
    axis.set_title("Decoded linear interpolations between the posterior means of two test "
                   "images\n(t = 0 … 1; the inputs at both ends)", fontsize=9)
    grids.save_figure(figure, path)


def pca_2d(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Projection of (N, d) points onto their first two principal components, and the
    fraction of the variance those two keep. d <= 2 is returned as is (padded to 2)."""
    points = np.asarray(points, np.float64)
    if points.shape[1] <= 2:
        padded = np.concatenate([points, np.zeros((len(points), 2 - points.shape[1]))], axis=1)
        return padded, 1.0
    centered = points - points.mean(axis=0)
    _, singular, vt = np.linalg.svd(centered, full_matrices=False)
    explained = float(np.sum(singular[:2] ** 2) / max(np.sum(singular ** 2), 1e-30))
    return centered @ vt[:2].T, explained


def plot_latent_map(means: np.ndarray, labels: np.ndarray, path: str) -> None:
    """The posterior means in 2-D (PCA when z_dim > 2), coloured by label."""
    z_dim = means.shape[1]
    points, explained = pca_2d(means)
    figure = grids.figure(figsize=(7, 6))
    axis = figure.subplots()
    cmap = matplotlib.colormaps["tab10"]
    for label in np.unique(labels):
        chosen = labels == label
        axis.scatter(points[chosen, 0], points[chosen, 1], s=3, alpha=0.5,
                     color=cmap(int(label) % 10), label=str(label), rasterized=True)
    legend = axis.legend(title="label", markerscale=4, loc="best", fontsize=8)
    for handle in legend.legend_handles:
        handle.set_alpha(1)
    if z_dim > 2:
        axis.set_title(f"Test-set posterior means E[z|x], z_dim={z_dim} projected to 2-D by "
                       f"PCA\n(the two components keep {100 * explained:.0f}% of the variance)",
                       fontsize=10)
        axis.set_xlabel("principal component 1")
        axis.set_ylabel("principal component 2")
    else:
        axis.set_title(f"Test-set posterior means E[z|x] (z_dim={z_dim})", fontsize=10)
        axis.set_xlabel("z[0]")
        axis.set_ylabel("z[1]" if z_dim == 2 else "")
    axis.grid(alpha=0.3)
    grids.save_figure(figure, path)


def plot_kl_per_dim(kl_per_dim: np.ndarray, activity: np.ndarray, path: str,
                    threshold: float = metrics.ACTIVE_UNIT_THRESHOLD) -> None:
    """Bars of the mean KL of each latent dimension, largest first; active units in blue,
    inactive ones gray with a red x and a red index (their bars are often invisible)."""
    kl_per_dim, activity = np.asarray(kl_per_dim), np.asarray(activity)
    order = np.argsort(-kl_per_dim, kind="stable")
    active = activity > threshold
    colors = np.where(active[order], "tab:blue", "tab:gray")
    figure = grids.figure(figsize=(max(6.0, 0.25 * len(order) + 2), 4.2))
    axis = figure.subplots()
    axis.bar(np.arange(len(order)), kl_per_dim[order], color=colors)
    axis.set_xticks(np.arange(len(order)), [str(i) for i in order],
                    fontsize=7 if len(order) <= 64 else 4, rotation=90)
    for tick, is_active in zip(axis.get_xticklabels(), active[order]):
        tick.set_color("black" if is_active else "tab:red")
    inactive_at = np.flatnonzero(~active[order])
    if inactive_at.size:  # their bars are about 0 high: mark them so they can be seen
        axis.plot(inactive_at, np.full(inactive_at.size, 0.03 * max(kl_per_dim.max(), 1e-3)),
                  "x", color="tab:red", markersize=6)
    axis.set_xlabel("latent dimension (sorted by KL)")
    axis.set_ylabel("mean KL(q(z_i|x) || N(0,1)), nats")
    axis.set_title(f"KL per latent dimension over the test set (total {kl_per_dim.sum():.2f} "
                   f"nats)\n{int(active.sum())} of {len(order)} active units "
                   f"(variance of E[z_i|x] > {threshold})", fontsize=10)
    axis.legend(handles=[Patch(color="tab:blue", label="active"),
                         Patch(color="tab:gray", label="inactive (×, red index)")])
    axis.grid(axis="y", alpha=0.3)
    grids.save_figure(figure, path)


def make_plots(workdir: str, model: VAE, variables: dict, images: np.ndarray,
               labels: np.ndarray, log=print) -> list[str]:
    """Writes the four pictures into `workdir` (training curves only with metrics.jsonl);
    returns the paths written."""
    written = []
    metrics_path = os.path.join(workdir, METRICS_FILE)
    records = read_metrics(metrics_path, warn=log) if os.path.exists(metrics_path) else []
    if records:
        path = os.path.join(workdir, "training_curves.png")
        plot_training_curves(records, path)
        written.append(path)
    else:
        log(f"no training curves: {metrics_path} is missing or empty")

    means, stddevs = elbo.encode(model, variables, images)
    pairs = choose_pairs(labels)
    starts = np.stack([means[a] for a, _ in pairs])
    ends = np.stack([means[b] for _, b in pairs])
    latents = np.stack([interpolate(s, e, INTERPOLATION_STEPS) for s, e in zip(starts, ends)])
    logits = likelihood.jitted_decoder(model)(variables, jnp.asarray(latents.reshape(
        -1, model.z_dim)))
    decoded = np.asarray(jax.nn.sigmoid(logits)).reshape(latents.shape[:2] + images.shape[1:])
    path = os.path.join(workdir, "interpolations.png")
    plot_interpolations(images[[a for a, _ in pairs]], decoded, images[[b for _, b in pairs]],
                        path, labels=[(int(labels[a]), int(labels[b])) for a, b in pairs])
    written.append(path)

    path = os.path.join(workdir, "latent_map.png")
    plot_latent_map(means, labels, path)
    written.append(path)

    kl = np.asarray(losses.kl_per_dimension(means.astype(np.float64),
                                            stddevs.astype(np.float64))).mean(axis=0)
    path = os.path.join(workdir, "kl_per_dim.png")
    plot_kl_per_dim(kl, metrics.latent_activity(means), path)
    written.append(path)
    return written
