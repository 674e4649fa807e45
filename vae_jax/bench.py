"""Benchmark of the training step: `python -m vae_jax.bench [--vs-torch] [--json]`.

Times `vae_jax.train.train_step`, jitted as training runs it (`make_train_step()`, state
donated), on random images in [0, 1] after compilation and warm-up, and reports the median
milliseconds per step, images per second, compile seconds and peak memory (the host's
resident-set high-water mark on CPU; the device's `peak_bytes_in_use` on a GPU/TPU when
JAX reports it).

`--vs-torch` also times the PyTorch original (the course notebook's model, BCELoss(sum) +
KL, Adam 2e-3, `rsample`) on the same batch with as many threads as XLA uses, in the same
process, alternating JAX and PyTorch rounds so that load from elsewhere hits both alike.
torch is imported only then (`pip install torch==2.13.0`).

Examples:
    python -m vae_jax.bench                          # batch 1024, summary line
    python -m vae_jax.bench --vs-torch --rounds 5    # ratio against PyTorch
    python -m vae_jax.bench --implementation all     # each convolution implementation
    python -m vae_jax.bench --batch-size 8 --steps 2 --json
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from typing import Callable

import jax
import numpy as np

from vae_jax import cli, torch_reference
from vae_jax.config import TrainConfig
from vae_jax.errors import InputError
from vae_jax.layers import IMPLEMENTATIONS, resolve_implementation
from vae_jax.models import IMAGE_SIZE, VAE
from vae_jax.parallel import DataParallel
from vae_jax.steps import RunKeys, create_train_state, make_optimizer, make_train_step

TORCH_HINT = "--vs-torch needs PyTorch: pip install torch==2.13.0"
LEARNING_RATE = TrainConfig().learning_rate  # the course's


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(prog=cli.program_name("python -m vae_jax.bench"),
                               description="Time the VAE's jitted training step.")
    parser.add_argument("--batch-size", type=cli.positive_int, default=TrainConfig().batch_size)
    parser.add_argument("--steps", type=cli.positive_int, default=10,
                        help="timed steps per round (default 10)")
    parser.add_argument("--rounds", type=cli.positive_int, default=None,
                        help="timing rounds of --steps steps; with --vs-torch JAX and PyTorch "
                             "alternate round by round (default 1, or 3 with --vs-torch)")
    parser.add_argument("--warmup", type=cli.non_negative_int, default=2,
                        help="untimed steps after compilation (default 2)")
    parser.add_argument("--implementation", choices=IMPLEMENTATIONS + ("all",), default="auto",
                        help="convolution implementation (vae_jax.layers); 'all' times each")
    parser.add_argument("--devices", type=cli.positive_int, default=1, metavar="N",
                        help="split each batch over the first N devices, as train.py "
                             "--devices N does (default 1; fake CPU devices share the "
                             "same cores, so they show no speed-up)")
    cli.add_platform_flag(parser)
    parser.add_argument("--vs-torch", action="store_true",
                        help="also time the PyTorch original, interleaved, and print the ratio")
    parser.add_argument("--retain-memory", action="store_true",
                        help="keep freed memory in the process (glibc mallopt) so that steps "
                             "do not page-fault their temporary buffers back in")
    cli.add_seed_flag(parser)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the summary lines")
    return parser


def num_threads() -> int:
    """CPU cores this process may use: XLA:CPU sizes its intra-op thread pool to them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def host_peak_rss_bytes() -> int:
    """The process's resident-set high-water mark (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def retain_freed_memory() -> bool:
    """Keeps freed memory in the process (glibc malloc), so a step does not page-fault.

    XLA:CPU allocates each execution's temporary buffer (~420 MB for this VAE's training step
    at batch 1024) with malloc and frees it afterwards; glibc serves such large blocks with
    fresh `mmap`s, so every step page-faults ~100k zeroed pages back in (about 0.25 s of
    kernel time per step on the development machine). With one arena, no mmap and no
    trimming, freed blocks stay in the heap and the next step reuses them. The resident
    memory then stays at its peak. Returns False where this is not glibc on Linux.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # glibc's <malloc.h>
    return all(mallopt(option, value) == 1 for option, value in (
        (m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1)))


def random_images(batch_size: int, seed: int) -> np.ndarray:
    """(batch, 28, 28, 1) float32 uniform in [0, 1]."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)


def time_steps(step: Callable[[], object], steps: int) -> list[float]:
    """Seconds of each of `steps` calls; `step` must block until its work is done."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


@dataclasses.dataclass
class JaxRunner:
    """A compiled JAX training step and its state; `step()` runs one and blocks."""

    implementation: str
    compile_seconds: float
    step_fn: Callable
    state: object
    images: object

    @classmethod
    def build(cls, implementation: str, images: np.ndarray, seed: int,
              parallel: DataParallel) -> "JaxRunner":
        """The step as `train.py` runs it on `parallel`'s mesh (state replicated, batch
        split over the devices)."""
        keys = RunKeys.from_seed(seed)
        state = parallel.replicate(create_train_state(
            VAE(implementation=implementation), make_optimizer(LEARNING_RATE), keys.init,
            keys.train))
        step_fn = make_train_step(parallel=parallel)
        device_images = parallel.split(images)
        start = time.perf_counter()  # tracing, lowering and XLA compilation
        step_fn = step_fn.lower(state, device_images).compile()
        compile_seconds = time.perf_counter() - start
        return cls(implementation, compile_seconds, step_fn, state, device_images)

    def step(self) -> None:
        self.state, metrics = self.step_fn(self.state, self.images)
        jax.block_until_ready(metrics["loss"])


def jax_peak_memory_bytes() -> tuple[int, str]:
    """(bytes, what): the device's peak use when JAX reports it, else the host's peak RSS."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # noqa: BLE001 - backends without memory statistics
            stats = {}
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "device_peak_bytes_in_use"
    return host_peak_rss_bytes(), "host_peak_rss"


class TorchRunner:
    """The PyTorch original's training step (`vae_jax.torch_reference`: the course notebook's
    model and loss, Adam 2e-3, `rsample`)."""

    def __init__(self, images: np.ndarray, seed: int, threads: int):
        import torch  # optional: only for --vs-torch
        self.torch = torch
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        self.model = torch_reference.course_vae()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        self.images = torch.from_numpy(np.array(images.transpose(0, 3, 1, 2)))  # NCHW copy
        self.threads = torch.get_num_threads()
        self.version = torch.__version__

    def step(self) -> None:
        self.optimizer.zero_grad()
        reconstructions, q_dist = self.model(self.images)
        loss = torch_reference.course_loss(reconstructions, self.images, q_dist)
        loss.backward()
        self.optimizer.step()
        loss.item()


def summarize(times: list[float], batch_size: int) -> dict:
    ms = 1e3 * statistics.median(times)
    return {"ms_per_step": round(ms, 2), "images_per_sec": round(batch_size / ms * 1e3, 1),
            "ms_per_step_min": round(1e3 * min(times), 2)}


def benchmark_implementation(args, implementation: str, images: np.ndarray,
                             get_torch: Callable[[], "TorchRunner | None"]) -> dict:
    """Compiles, warms up and times one implementation, alternating rounds with PyTorch.

    The peak memory is read after JAX's warm-up and first timed round, before PyTorch (built
    lazily by `get_torch`, which returns None without --vs-torch) first runs.
    """
    runner = JaxRunner.build(implementation, images, args.seed, args.parallel)
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
              **summarize(jax_times, args.batch_size),
              "compile_seconds": round(runner.compile_seconds, 2),
              "peak_memory_bytes": memory[0], "peak_memory_kind": memory[1],
              "timed_steps": len(jax_times),
              # Median ms/step of each round in the order run (JAX, PyTorch, JAX, ...).
              "round_medians_ms": round_medians}
    if torch_times:
        torch_summary = summarize(torch_times, args.batch_size)
        result.update({f"torch_{name}": value for name, value in torch_summary.items()})
        result["speedup_vs_torch"] = round(
            torch_summary["ms_per_step"] / result["ms_per_step"], 3)
        # Best step against best step: less sensitive to load from other processes.
        result["speedup_vs_torch_min"] = round(
            torch_summary["ms_per_step_min"] / result["ms_per_step_min"], 3)
    return result


def torch_factory(args, images: np.ndarray) -> Callable[[], "TorchRunner | None"]:
    """A function that returns the warmed-up PyTorch runner (built on first call), or None."""
    built = []

    def get() -> TorchRunner | None:
        if not args.vs_torch:
            return None
        if not built:
            runner = TorchRunner(images, args.seed, num_threads())
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
    images = random_images(args.batch_size, args.seed)
    get_torch = torch_factory(args, images)
    implementations = (("matmul", "xla") if args.implementation == "all"
                       else (args.implementation,))
    results = [benchmark_implementation(args, name, images, get_torch)
               for name in implementations]
    report = {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
              "devices": args.parallel.device_count,
              "jax_version": jax.__version__, "batch_size": args.batch_size,
              "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
              "threads": num_threads(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
    torch_runner = get_torch()
    if torch_runner is not None:
        report.update({"torch_version": torch_runner.version,
                       "torch_threads": torch_runner.threads})
    report.update(results[0])
    if len(results) > 1:
        report["implementations"] = results
    return report


def format_summary(report: dict) -> list[str]:
    lines = []
    for result in report.get("implementations", [report]):
        line = (f"{report['backend']} ({report['devices']} device(s)) batch "
                f"{report['batch_size']} implementation "
                f"{result['implementation']} ({result['resolved_implementation']}): "
                f"{result['ms_per_step']:.1f} ms/step, {result['images_per_sec']:.0f} images/s, "
                f"compile {result['compile_seconds']:.1f} s, peak memory "
                f"{result['peak_memory_bytes'] / 2**20:.0f} MiB ({result['peak_memory_kind']})")
        if "torch_ms_per_step" in result:
            line += (f"; PyTorch {report['torch_version']} ({report['torch_threads']} threads): "
                     f"{result['torch_ms_per_step']:.1f} ms/step, "
                     f"{result['torch_images_per_sec']:.0f} images/s; "
                     f"JAX/PyTorch speedup {result['speedup_vs_torch']:.2f}x")
        lines.append(line)
    return lines


def prepare(args: argparse.Namespace) -> None:
    """What must happen before JAX starts: checking for torch, retaining freed memory."""
    if args.rounds is None:
        args.rounds = 3 if args.vs_torch else 1
    if args.vs_torch:
        try:
            import torch  # noqa: F401  (optional: only for --vs-torch)
        except ImportError:
            raise InputError(TORCH_HINT) from None
    args.retained_memory = retain_freed_memory() if args.retain_memory else False
    if args.retain_memory and not args.retained_memory:
        print(f"{cli.program_name('python -m vae_jax.bench')}: warning: --retain-memory needs "
              "glibc on Linux; ignored", file=sys.stderr)


def command(args: argparse.Namespace) -> None:
    report = run(args)
    report["retain_memory"] = args.retained_memory
    print(json.dumps(report) if args.json else "\n".join(format_summary(report)))


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv, before_platform=prepare)


if __name__ == "__main__":
    sys.exit(main())
