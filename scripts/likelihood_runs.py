"""The runs of the likelihood table (docs/results.md), made in pieces under a time budget.

    python scripts/likelihood_runs.py --dataset mnist.npz --runs-dir runs/likelihood \\
        [--budget-minutes 10] [--only NAME ...] [--platform gpu] [--quick]

Each recipe below trains in RUNS_DIR/NAME with `train.py` (resuming where an earlier call
stopped), until it ends or the budget runs out: then the run gets SIGTERM, saves a
checkpoint and waits for the next call. A finished run is evaluated once, in nats on the
test split (`vae-jax-evaluate --json`, K = 50 and K = 5000), into NAME/evaluation_k50.json
and NAME/evaluation_k5000.json. Last, one table: each recipe's epochs, negative ELBO, the
two IWAE bounds with their standard errors, active units and training time.

`--dataset` takes an arrays file (`vae-jax-export-data --out mnist.npz`), so a machine with
JAX and no TensorFlow can run it. `--quick` shrinks every recipe to seconds on a CPU (the
tests run it so).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time

from vae_jax.checkpoints import metrics_file
from vae_jax.checkpoints.workdir import METRICS_FILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARIZED = ["--binarize", "dynamic", "--epochs", "100", "--lr-schedule", "cosine"]
RECIPES = {
    "elbo_cosine": BINARIZED,
    "dreg5_cosine": [*BINARIZED, "--objective", "dreg", "--objective-samples", "5"],
    "dreg50_cosine": [*BINARIZED, "--objective", "dreg", "--objective-samples", "50"],
    "wide32_elbo_cosine": [*BINARIZED, "--hidden-dim", "32"],
    "wide32_dreg5": [*BINARIZED, "--hidden-dim", "32", "--objective", "dreg",
                     "--objective-samples", "5"],
}
EVALUATIONS = (50, 5000)  # K of each evaluation of a finished run
QUICK = {"train": ["--epochs", "2", "--batch-size", "16", "--train-split", "train[:32]",
                   "--test-split", "test[:16]"],
         "evaluate": ["--split", "test[:8]"], "evaluations": (2, 5)}
STOP_GRACE_SECONDS = 120  # for a run given SIGTERM to save its checkpoint


def positive_minutes(text: str) -> float:
    """An argparse type: a finite number of minutes above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True,
                        help="a tfds dataset or an arrays file FILE.npz")
    parser.add_argument("--data-dir", default=None, help="tfds data directory")
    parser.add_argument("--runs-dir", required=True, help="one workdir per recipe in it")
    parser.add_argument("--budget-minutes", type=positive_minutes, default=10.0,
                        help="training time for this call, all recipes together (default 10)")
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES), metavar="NAME",
                        help=f"these recipes alone (of {', '.join(RECIPES)})")
    parser.add_argument("--platform", default="auto", choices=("auto", "cpu", "gpu", "tpu"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a test")
    args = parser.parse_args(argv)
    # The runs train and evaluate with the repository as working directory: paths given
    # relative to the caller's are made absolute here.
    args.runs_dir = os.path.abspath(args.runs_dir)
    if args.dataset.endswith(".npz"):
        args.dataset = os.path.abspath(args.dataset)
    if args.data_dir:
        args.data_dir = os.path.abspath(args.data_dir)
    return args


def read_metrics(workdir: str) -> list[dict]:
    """The run's epoch records; a half-written last line (a run killed while appending) is
    skipped, as the resumed run will redo that epoch."""
    path = os.path.join(workdir, METRICS_FILE)
    return metrics_file.read_metrics(path) if os.path.exists(path) else []


def planned_epochs(flags: list[str]) -> int:
    """The last --epochs among a recipe's flags (--quick's come after the recipe's)."""
    return int([flags[i + 1] for i, flag in enumerate(flags) if flag == "--epochs"][-1])


def train(flags: list[str], workdir: str, seconds: float) -> str:
    """Trains (or resumes) until done or `seconds` have passed; "done" or "stopped"."""
    command = [sys.executable, os.path.join(REPO, "train.py"), *flags,
               "--workdir", workdir, "--no-progress"]
    print("$", " ".join(command), flush=True)
    process = subprocess.Popen(command)
    try:
        code = process.wait(timeout=max(seconds, 1.0))
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # train.py saves a checkpoint and exits
        process.wait(timeout=STOP_GRACE_SECONDS)
        return "stopped"
    if code != 0:
        raise SystemExit(f"likelihood_runs.py: train.py exited with {code} in {workdir}")
    return "done"


def evaluate(workdir: str, samples: int, args: argparse.Namespace, extra: list[str]) -> dict:
    """`vae-jax-evaluate --json` of a finished run, kept in WORKDIR/evaluation_k{K}.json."""
    path = os.path.join(workdir, f"evaluation_k{samples}.json")
    if not os.path.exists(path):
        result = subprocess.run(
            [sys.executable, "-m", "vae_jax.commands.evaluate", "--workdir", workdir,
             "--iwae-samples", str(samples), "--platform", args.platform, "--json",
             "--no-progress", *extra], cwd=REPO, check=True, capture_output=True, text=True)
        with open(path + ".partial", "w") as file:
            file.write(result.stdout)
        os.replace(path + ".partial", path)
    with open(path) as file:
        return json.load(file)


def table_row(name: str, workdir: str, epochs: int, samples: tuple[int, ...],
              evaluations: dict[int, dict]) -> str:
    """The recipe's row; the evaluations' cells (one per K in `samples`) are empty until
    the run has finished."""
    metrics = read_metrics(workdir)
    done = metrics[-1]["epoch"] if metrics else 0
    minutes = sum(record["seconds"] for record in metrics) / 60
    cells = [name, f"{done}/{epochs}"]
    if evaluations:
        first = next(iter(evaluations.values()))
        cells.append(f"{first['neg_elbo']:.2f} ± {first['neg_elbo_stderr']:.2f}")
        cells += [f"{result['nll_iwae']:.2f} ± {result['nll_iwae_stderr']:.2f}"
                  for result in evaluations.values()]
        cells.append(str(first["active_units"]))
    else:
        cells += [""] * (2 + len(samples))
    cells.append(f"{minutes:.1f} min")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = ["--dataset", args.dataset, "--platform", args.platform]
    if args.data_dir:
        data += ["--data-dir", args.data_dir]
    train_extra, evaluate_extra, samples = [], [], EVALUATIONS
    if args.quick:
        train_extra, evaluate_extra = QUICK["train"], QUICK["evaluate"]
        samples = QUICK["evaluations"]
    os.makedirs(args.runs_dir, exist_ok=True)
    deadline = time.monotonic() + 60 * args.budget_minutes
    rows = []
    for name in args.only or RECIPES:
        workdir = os.path.join(args.runs_dir, name)
        flags = [*RECIPES[name], *data, *train_extra]
        epochs = planned_epochs(flags)
        metrics = read_metrics(workdir)
        finished = bool(metrics) and metrics[-1]["epoch"] >= epochs
        if not finished and deadline - time.monotonic() > 0:
            finished = train(flags, workdir, deadline - time.monotonic()) == "done"
        evaluations = ({k: evaluate(workdir, k, args, evaluate_extra) for k in samples}
                       if finished else {})
        rows.append(table_row(name, workdir, epochs, samples, evaluations))
    header = ["recipe", "epochs", "negative ELBO", *(f"IWAE K = {k}" for k in samples),
              "active units", "training"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
