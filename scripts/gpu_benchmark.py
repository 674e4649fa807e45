"""Everything vae-jax can time on one machine, in one command: one table, one JSON file.

    python scripts/gpu_benchmark.py [--quick] [--out gpu_benchmark.json]

(`scripts/gpu_benchmark.sh` wraps it for a GPU machine without internet.) Each row is one
`python -m vae_jax.commands.bench --json` run in a fresh process, so each has its own compile time
and peak memory:

* the training step, each convolution implementation (xla, matmul, winograd), at several
  batch sizes (`--mode step`, train.py's default epoch mode on CPU), and
* the scan epoch, each implementation, on a synthetic 60,000-image training set
  (`--mode epoch`, train.py's default on a GPU), each with the PyTorch original's step or
  epoch beside it where torch is installed (on the GPU when torch has CUDA);
* the IWAE evaluation's decoder throughput (`--mode iwae`), each implementation.

The machine's matmul floor is measured once, in the first row. `--quick` shrinks every
size so that the whole script runs on a CPU in about a minute (the tests run it so).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLEMENTATIONS = ("xla", "matmul", "winograd")
FULL = {"batch_sizes": (256, 1024, 4096), "num_images": 60000, "epoch_batch": 1024,
        "iwae_batch": 100, "iwae_samples": 500, "steps": 10, "floor_size": 8192}
QUICK = {"batch_sizes": (8,), "num_images": 64, "epoch_batch": 32, "iwae_batch": 4,
         "iwae_samples": 4, "steps": 1, "floor_size": 256}


def torch_installed() -> bool:
    """Whether torch can be imported, without importing it here (the rows do)."""
    return importlib.util.find_spec("torch") is not None


def rows_to_run(sizes: dict, with_torch: bool) -> list[list[str]]:
    """The bench flags of each row, in the order run."""
    common = ["--steps", str(sizes["steps"]), "--json", "--floor-size", "0"]
    vs_torch = ["--vs-torch", "--rounds", "3"] if with_torch else []
    rows = []
    for implementation in IMPLEMENTATIONS:
        for batch_size in sizes["batch_sizes"]:
            rows.append(["--mode", "step", "--implementation", implementation,
                         "--batch-size", str(batch_size)] + vs_torch)
        rows.append(["--mode", "epoch", "--implementation", implementation,
                     "--batch-size", str(sizes["epoch_batch"]),
                     "--num-images", str(sizes["num_images"]), "--warmup", "1"] + vs_torch)
        rows.append(["--mode", "iwae", "--implementation", implementation,
                     "--batch-size", str(sizes["iwae_batch"]),
                     "--iwae-samples", str(sizes["iwae_samples"])])
    rows = [row + common for row in rows]
    rows[0][rows[0].index("--floor-size") + 1] = str(sizes["floor_size"])  # measured once
    return rows


def run_row(flags: list[str], platform: str, timeout: float) -> dict:
    """One `python -m vae_jax.commands.bench` process; its JSON report, or the error it printed."""
    command = [sys.executable, "-m", "vae_jax.commands.bench", "--platform", platform, *flags]
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {timeout:.0f} s (--row-timeout)", "flags": flags}
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no output)"]
        return {"error": lines[-1], "flags": flags}
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["flags"] = flags
    return report


def table(reports: list[dict]) -> list[str]:
    """The rows as a fixed-width table; the floor, when measured, on the last line."""
    header = (f"{'mode':<6} {'impl':<7} {'batch':>6} {'ms/call':>10} {'per second':>14} "
              f"{'compile s':>9} {'peak MiB':>9} {'PyTorch ms':>10} {'vs PyTorch':>10}")
    lines = [header, "-" * len(header)]
    for report in reports:
        if "error" in report:
            lines.append(f"failed: {' '.join(report['flags'])}: {report['error']}")
            continue
        unit = "decodes/s" if report["mode"] == "iwae" else "images/s"
        torch_ms = report.get("torch_ms_per_step")
        torch_cells = ("", "") if torch_ms is None else (
            f"{torch_ms:.1f}", f"{report['speedup_vs_torch']:.2f}x")
        lines.append(
            f"{report['mode']:<6} {report['resolved_implementation']:<7} "
            f"{report['batch_size']:>6} {report['ms_per_step']:>10.1f} "
            f"{report['images_per_sec']:>10.0f} {unit:<3} {report['compile_seconds']:>9.1f} "
            f"{report['peak_memory_bytes'] / 2**20:>9.0f} "
            f"{torch_cells[0]:>10} {torch_cells[1]:>10}")
    floors = [report["matmul_gflops"] for report in reports if "matmul_gflops" in report]
    if floors:
        lines.append(f"float32 matmul floor: {floors[0]:.0f} GFLOP/s")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, for a CPU or a check that everything runs")
    parser.add_argument("--platform", default="auto", choices=("auto", "cpu", "gpu", "tpu"))
    parser.add_argument("--out", default="gpu_benchmark.json", help="the JSON file to write")
    parser.add_argument("--no-torch", action="store_true",
                        help="leave out the PyTorch original even where torch is installed")
    parser.add_argument("--row-timeout", type=float, default=600, metavar="SECONDS",
                        help="stop a row that runs longer, report it as failed and go on")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    with_torch = torch_installed() and not args.no_torch
    started = time.time()
    reports = []
    for flags in rows_to_run(sizes, with_torch):
        reports.append(run_row(flags, args.platform, args.row_timeout))
        print(f"[{time.time() - started:6.0f} s] {' '.join(flags)}", file=sys.stderr)
        with open(args.out, "w") as file:  # after every row: a killed run keeps what it had
            json.dump({"quick": args.quick, "rows": reports,
                       "seconds": round(time.time() - started, 1)}, file, indent=1)
    print("\n".join(table(reports)))
    print(f"wrote {args.out}")
    return 1 if any("error" in report for report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
