"""What a benchmark run measures and reports (`vae-jax-bench`, `vae_jax.commands.bench`).

`run(args)` times each convolution implementation asked for (`benchmark_implementation`),
with PyTorch's rounds interleaved under `--vs-torch`, adds the floor (`add_floor`) and
returns the report that `format_summary` prints.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from typing import Callable

import jax
import numpy as np

from vae_jax.benchmarks import op_profile
from vae_jax.benchmarks.roofline import matmul_flops_per_second
from vae_jax.benchmarks.runners import (
    JaxRunner,
    TorchRunner,
    jax_peak_memory_bytes,
    num_threads,
    random_images,
    summarize,
    time_steps,
)
from vae_jax.evaluation import likelihood
from vae_jax.kernels.convolutions import IMPLEMENTATIONS, resolve_implementation
from vae_jax.runtime import hugepages
from vae_jax.runtime.errors import InputError
from vae_jax.runtime.mesh import DataParallel

MODES = ("step", "epoch", "iwae")
IWAE_PROJECTION = (10_000, 5000)  # the test set with K = 5000: the literature's NLL estimate


def benchmark_implementation(args, implementation: str, images: np.ndarray,
                             get_torch: Callable[[], "TorchRunner | None"]) -> dict:
    """Compiles, warms up and times one implementation, alternating rounds with PyTorch.

    The peak memory is read after JAX's warm-up and first timed round, before PyTorch (built
    lazily by `get_torch`, which returns None without --vs-torch) first runs.
    """
    runner = JaxRunner.build(args.mode, implementation, images, args)
    for _ in range(args.warmup):
        runner.step()
    jax_times, torch_times, round_medians = [], [], []
    memory = None
    for _ in range(args.rounds):
        jax_times += time_steps(runner.step, args.steps)
        round_medians.append(round(1e3 * statistics.median(jax_times[-args.steps:]), 2))
        if memory is None:
            memory = jax_peak_memory_bytes()
        torch_runner = get_torch()
        if torch_runner is not None:
            torch_times += time_steps(torch_runner.step, args.steps)
            round_medians.append(round(1e3 * statistics.median(torch_times[-args.steps:]), 2))
    result = {"implementation": implementation,
              "resolved_implementation": resolve_implementation(implementation),
              **summarize(jax_times, runner.images_per_call),
              "compile_seconds": round(runner.compile_seconds, 2),
              "peak_memory_bytes": memory[0], "peak_memory_kind": memory[1],
              "timed_steps": len(jax_times),
              # Median ms/step of each round in the order run (JAX, PyTorch, JAX, ...).
              "round_medians_ms": round_medians}
    if runner.flops_per_call is not None:
        result["gflop_per_step"] = round(runner.flops_per_call / 1e9, 3)
    if args.mode == "iwae":
        decodes_per_sec = result["images_per_sec"]
        images, samples = IWAE_PROJECTION
        result.update({"decodes_per_sec": decodes_per_sec,
                       "iwae_samples": args.iwae_samples,
                       "iwae_chunk": likelihood.default_chunk_size(args.iwae_samples,
                                                                   args.batch_size),
                       "projected_minutes_k5000_test_set": round(
                           images * samples / decodes_per_sec / 60, 1)})
    if torch_times:
        torch_summary = summarize(torch_times, runner.images_per_call)
        result.update({f"torch_{name}": value for name, value in torch_summary.items()})
        result["speedup_vs_torch"] = round(
            torch_summary["ms_per_step"] / result["ms_per_step"], 3)
        # Best step against best step: less sensitive to load from other processes.
        result["speedup_vs_torch_min"] = round(
            torch_summary["ms_per_step_min"] / result["ms_per_step_min"], 3)
    if args.breakdown:
        times = op_profile.profile(runner.step, runner.step_fn)
        result["breakdown_ms"] = [dataclasses.asdict(op_time) for op_time in times]
    return result


def add_floor(report: dict, size: int) -> None:
    """Adds the matmul floor (`roofline`) and each result's fraction of it, in place."""
    if not size:
        return
    flops_per_sec = matmul_flops_per_second(size)
    report["matmul_gflops"] = round(flops_per_sec / 1e9, 1)
    for result in report.get("implementations", [report]):
        if "gflop_per_step" in result:
            achieved = result["gflop_per_step"] * 1e9 / (result["ms_per_step"] / 1e3)
            result["fraction_of_floor"] = round(achieved / flops_per_sec, 3)


def torch_factory(args, images: np.ndarray) -> Callable[[], "TorchRunner | None"]:
    """A function that returns the warmed-up PyTorch runner (built on first call), or None."""
    built = []

    def get() -> TorchRunner | None:
        if not args.vs_torch:
            return None
        if not built:
            runner = TorchRunner(images, args.batch_size, args.seed, num_threads())
            for _ in range(max(args.warmup, 1)):
                runner.step()
            built.append(runner)
        return built[0]

    return get


def run(args) -> dict:
    """Runs the benchmark described by the parsed flags; returns the report (a flat dict)."""
    args.parallel = DataParallel.create(args.devices)
    devices = args.parallel.device_count
    if args.batch_size % devices:
        below = args.batch_size // devices * devices
        above = below + devices
        raise InputError(f"--batch-size {args.batch_size} cannot be split evenly over "
                         f"{devices} devices; try {below or above} or {above}")
    images = random_images(args.num_images if args.mode == "epoch" else args.batch_size,
                           args.seed)
    get_torch = torch_factory(args, images)
    implementations = (tuple(name for name in IMPLEMENTATIONS if name != "auto")
                       if args.implementation == "all" else (args.implementation,))
    results = [benchmark_implementation(args, name, images, get_torch)
               for name in implementations]
    report = {"mode": args.mode, "backend": jax.default_backend(),
              "device": str(jax.devices()[0]), "devices": args.parallel.device_count,
              "jax_version": jax.__version__, "batch_size": args.batch_size,
              "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
              "threads": num_threads(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "huge_pages": hugepages.enabled()}
    if args.mode == "epoch":
        report["num_images"] = args.num_images
    if args.mode != "iwae":
        report.update(objective=args.objective, objective_samples=args.objective_samples)
    torch_runner = get_torch()
    if torch_runner is not None:
        report.update({"torch_version": torch_runner.version,
                       "torch_threads": torch_runner.threads,
                       "torch_device": str(torch_runner.device)})
    report.update(results[0])
    if len(results) > 1:
        report["implementations"] = results
    add_floor(report, args.floor_size)
    return report


_UNITS = {"step": ("ms/step", "images/s"), "epoch": ("ms/epoch", "images/s"),
          "iwae": ("ms/batch", "decodes/s")}


def format_summary(report: dict) -> list[str]:
    """One line per implementation; with --breakdown, then a table per layer and pass."""
    lines = []
    per_call, per_sec = _UNITS[report["mode"]]
    floor = report.get("matmul_gflops")
    for result in report.get("implementations", [report]):
        line = (f"{report['mode']}: {report['backend']} ({report['devices']} device(s)) batch "
                f"{report['batch_size']} implementation "
                f"{result['implementation']} ({result['resolved_implementation']}): "
                f"{result['ms_per_step']:.1f} {per_call}, {result['images_per_sec']:.0f} "
                f"{per_sec}, compile {result['compile_seconds']:.1f} s, peak memory "
                f"{result['peak_memory_bytes'] / 2**20:.0f} MiB ({result['peak_memory_kind']})")
        if "fraction_of_floor" in result:
            line += (f"; {result['gflop_per_step']:.1f} GFLOP a call at "
                     f"{result['fraction_of_floor']:.0%} of the {floor:.0f} GFLOP/s matmul floor")
        if "projected_minutes_k5000_test_set" in result:
            line += (f"; K=5000 on 10,000 images would take "
                     f"{result['projected_minutes_k5000_test_set']:.0f} min")
        if "torch_ms_per_step" in result:
            line += (f"; PyTorch {report['torch_version']} ({report['torch_threads']} threads): "
                     f"{result['torch_ms_per_step']:.1f} ms/step, "
                     f"{result['torch_images_per_sec']:.0f} images/s; "
                     f"JAX/PyTorch speedup {result['speedup_vs_torch']:.2f}x")
        lines.append(line)
        if "breakdown_ms" in result:
            lines += format_breakdown(result["breakdown_ms"], result["ms_per_step"])
    return lines


def format_breakdown(rows: list[dict], ms_per_step: float) -> list[str]:
    """The --breakdown table: per layer and pass, then the ten largest single ops."""
    times = [op_profile.OpTime(**row) for row in rows]
    lines = [f"  where a {ms_per_step:.0f} ms step goes (op time; concurrent ops overlap):"]
    for layer, phase, ms in op_profile.by_layer(times):
        if ms < 0.05:
            continue
        lines.append(f"    {layer:<20} {phase:<9} {ms:8.1f} ms")
    lines.append("  largest ops:")
    for op_time in times[:10]:
        lines.append(f"    {op_time.layer:<20} {op_time.phase:<9} {op_time.op:<14} "
                     f"{op_time.milliseconds:8.1f} ms")
    return lines
