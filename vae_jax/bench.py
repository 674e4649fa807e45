"""Benchmarks: `python -m vae_jax.bench [--mode step|epoch|iwae] [--vs-torch] [--json]`.

Times a computation as the commands run it, after compilation and warm-up:

* `step` (default): `vae_jax.steps.train_step`, jitted as `train.py` runs it
  (`make_train_step()`, state donated), on random images in [0, 1];
* `epoch`: the `lax.scan` epoch (`make_train_epoch`, `train.py --epoch-mode scan`) over
  `--num-images` random images;
* `iwae`: `vae_jax.evaluate`'s IWAE pass over one batch, with its default chunking, in
  decoded images per second, and the time K = 5000 on the 10,000 test images would take.

It reports the median milliseconds per call, images (or decodes) per second, compile
seconds, the peak memory (the host's resident-set high-water mark on CPU; the device's
`peak_bytes_in_use` on a GPU/TPU when JAX reports it), and the floor (`vae_jax.roofline`):
XLA's FLOP count of a call against a large matmul's rate. `--breakdown` profiles the step
per layer, pass and op (`vae_jax.op_profile`). Run as a command, it re-executes itself with
huge pages as every command does (`vae_jax.hugepages`), so it measures what they do.

`--vs-torch` also times the PyTorch original (the course notebook's model, BCELoss(sum) +
KL, Adam 2e-3, `rsample`) on the same batch, or with `--mode epoch` the same epoch
(`TorchRunner`), with as many threads as XLA uses, in the same process, alternating JAX and
PyTorch rounds so that load from elsewhere hits both alike.
torch is imported only then (`pip install torch==2.13.0`).

Examples:
    python -m vae_jax.bench                          # batch 1024, summary line
    python -m vae_jax.bench --vs-torch --rounds 5    # ratio against PyTorch
    python -m vae_jax.bench --breakdown              # where the step's time goes
    python -m vae_jax.bench --mode iwae              # the IWAE decoder's throughput
    python -m vae_jax.bench --implementation all     # each convolution implementation
    python -m vae_jax.bench --batch-size 8 --steps 2 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import cli, evaluate, hugepages, op_profile, torch_reference
from vae_jax.config import TrainConfig
from vae_jax.errors import InputError
from vae_jax.layers import IMPLEMENTATIONS, resolve_implementation
from vae_jax.models import IMAGE_SIZE, VAE
from vae_jax.parallel import DataParallel
from vae_jax.roofline import MATMUL_SIZE, compiled_flops, matmul_flops_per_second
from vae_jax.steps import (RunKeys, create_train_state, make_optimizer, make_train_epoch,
                           make_train_step)

TORCH_HINT = "--vs-torch needs PyTorch: pip install torch==2.13.0"
LEARNING_RATE = TrainConfig().learning_rate  # the course's
MODES = ("step", "epoch", "iwae")
IWAE_PROJECTION = (10_000, 5000)  # the test set with K = 5000: the literature's NLL estimate


def build_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(prog=cli.program_name("python -m vae_jax.bench"),
                               description="Time the VAE's training step, scan epoch or "
                                           "IWAE decoder.")
    parser.add_argument("--mode", choices=MODES, default="step",
                        help="what to time: 'step', the training step (default); 'epoch', "
                             "the lax.scan epoch (train.py --epoch-mode scan) over --num-images "
                             "synthetic images; 'iwae', the IWAE evaluation's decoder "
                             "throughput, as vae_jax.evaluate runs it")
    parser.add_argument("--batch-size", type=cli.positive_int, default=None,
                        help=f"images per step (default {TrainConfig().batch_size}; in 'iwae' "
                             f"mode images per evaluation batch, default "
                             f"{evaluate.DEFAULT_BATCH_SIZE})")
    parser.add_argument("--steps", type=cli.positive_int, default=10,
                        help="timed calls per round: steps, epochs or IWAE batches (default 10)")
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
    parser.add_argument("--num-images", type=cli.positive_int, default=60000,
                        help="'epoch' mode: synthetic training images (default 60000, MNIST's)")
    parser.add_argument("--iwae-samples", type=cli.positive_int, default=200, metavar="K",
                        help="'iwae' mode: samples per image in each timed call (default 200; "
                             "the throughput does not depend on it, the chunking is "
                             "vae_jax.evaluate's)")
    parser.add_argument("--breakdown", action="store_true",
                        help="'step' mode: also profile one step per layer, pass and op "
                             "(jax.profiler) and print where the time goes")
    parser.add_argument("--floor-size", type=cli.non_negative_int, default=MATMUL_SIZE,
                        metavar="N", help="measure the floor with N x N float32 matmuls "
                                          f"(default {MATMUL_SIZE}; 0 skips it)")
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
    """A compiled JAX computation and its inputs; `step()` runs one call and blocks.

    `images_per_call`: the images one call processes (for 'iwae', decoded images);
    `flops_per_call`: XLA's count of its floating point operations, or None; `trains`:
    whether a call returns a new state and metrics (training) or only its outputs
    (evaluation, where `state` holds the unchanging variables).
    """

    implementation: str
    compile_seconds: float
    step_fn: Callable
    state: object
    inputs: tuple
    images_per_call: int
    flops_per_call: float | None
    trains: bool = True

    @classmethod
    def build(cls, mode: str, implementation: str, images: np.ndarray, args) -> "JaxRunner":
        """The computation of `mode` as the commands run it on `args.parallel`'s mesh."""
        build = {"step": cls._train_step, "epoch": cls._train_epoch, "iwae": cls._iwae}[mode]
        return build(implementation, images, args)

    @classmethod
    def _train_step(cls, implementation, images, args) -> "JaxRunner":
        """`train.py`'s step: state replicated, the batch split over the devices."""
        state = _initial_state(implementation, args)
        inputs = (args.parallel.split(images),)
        step_fn, seconds = _compile(make_train_step(parallel=args.parallel), state, *inputs)
        return cls(implementation, seconds, step_fn, state, inputs, len(images),
                   compiled_flops(step_fn))

    @classmethod
    def _train_epoch(cls, implementation, images, args) -> "JaxRunner":
        """`train.py --epoch-mode scan`'s epoch: the whole training set on the device, one call."""
        state = _initial_state(implementation, args)
        inputs = (args.parallel.replicate(images), RunKeys.from_seed(args.seed).train)
        epoch_fn = make_train_epoch(args.batch_size, parallel=args.parallel)
        step_fn, seconds = _compile(epoch_fn, state, *inputs)
        return cls(implementation, seconds, step_fn, state, inputs, len(images), None)

    @classmethod
    def _iwae(cls, implementation, images, args) -> "JaxRunner":
        """`vae_jax.evaluate`'s IWAE pass over one batch, with its default chunking.

        The state is the initialised model's variables; the time per decode does not
        depend on their values."""
        model = VAE(implementation=implementation)
        variables = args.parallel.replicate(_initial_state(implementation, args).variables)
        mean, stddev = jax.jit(lambda v, x: model.apply(v, x, train=False,
                                                        method=VAE.encode))(variables, images)
        chunk = evaluate.default_chunk_size(args.iwae_samples, len(images))
        start = time.perf_counter()
        step_fn = evaluate.iwae_step(model, images.shape, args.iwae_samples, chunk,
                                     args.parallel)
        seconds = time.perf_counter() - start
        indices = np.arange(len(images), dtype=np.int32)
        inputs = tuple(args.parallel.split(np.asarray(array))
                       for array in (images, mean, stddev, indices))
        inputs += (args.parallel.replicate(jax.random.key(args.seed)),)
        decodes = len(images) * args.iwae_samples
        per_decode = decoder_flops_per_image(model, variables)
        return cls(implementation, seconds, step_fn, variables, inputs, decodes,
                   None if per_decode is None else per_decode * decodes, trains=False)

    def step(self) -> None:
        if not self.trains:
            jax.block_until_ready(self.step_fn(self.state, *self.inputs))
            return
        self.state, metrics = self.step_fn(self.state, *self.inputs)
        jax.block_until_ready(metrics)


def _initial_state(implementation: str, args):
    keys = RunKeys.from_seed(args.seed)
    return args.parallel.replicate(create_train_state(
        VAE(implementation=implementation), make_optimizer(LEARNING_RATE), keys.init,
        keys.train))


def _compile(function, *arguments) -> tuple[jax.stages.Compiled, float]:
    """`function` jitted, lowered and compiled for `arguments`, and the seconds it took."""
    start = time.perf_counter()
    compiled = function.lower(*arguments).compile()
    return compiled, time.perf_counter() - start


def decoder_flops_per_image(model: VAE, variables: dict, batch: int = 1000) -> float | None:
    """XLA's count of one eval-mode decode's floating point operations (per image)."""
    latents = jax.ShapeDtypeStruct((batch, model.z_dim), jnp.float32)
    flops = compiled_flops(evaluate.jitted_decoder(model).lower(variables, latents).compile())
    return None if flops is None else flops / batch


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
    """The PyTorch original's training (`vae_jax.torch_reference`: the course notebook's
    model and loss, Adam 2e-3, `rsample`), on the GPU where JAX runs on one and torch has
    CUDA, else on the CPU.

    With as many images as `batch_size`, a call is one step; with more (`--mode epoch`), a
    call is an epoch over them: a fresh permutation on the device, then one step per batch
    of `batch_size` (the last one smaller), each ending in `loss.item()` as the course's
    loop does. The images live on the device either way, as in the scan epoch."""

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, threads: int):
        import torch  # optional: only for --vs-torch
        self.torch = torch
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
        self.device = torch.device("cuda" if on_gpu else "cpu")
        self.model = torch_reference.course_vae().to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        self.images = torch.from_numpy(  # NCHW copy
            np.array(images.transpose(0, 3, 1, 2))).to(self.device)
        self.batch_size = batch_size
        self.threads = torch.get_num_threads()
        self.version = torch.__version__

    def step(self) -> None:
        count = len(self.images)
        if count <= self.batch_size:
            self._train(self.images)
            return
        order = self.torch.randperm(count, device=self.device)
        for start in range(0, count, self.batch_size):
            self._train(self.images[order[start:start + self.batch_size]])

    def _train(self, images) -> None:
        self.optimizer.zero_grad()
        reconstructions, q_dist = self.model(images)
        loss = torch_reference.course_loss(reconstructions, images, q_dist)
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
                       "iwae_chunk": evaluate.default_chunk_size(args.iwae_samples,
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


def prepare(args: argparse.Namespace) -> None:
    """What must happen before JAX starts: the mode's defaults, checking for torch."""
    if args.rounds is None:
        args.rounds = 3 if args.vs_torch else 1
    if args.batch_size is None:
        args.batch_size = (evaluate.DEFAULT_BATCH_SIZE if args.mode == "iwae"
                           else TrainConfig().batch_size)
    if args.vs_torch and args.mode == "iwae":
        raise InputError("--vs-torch times training: use it with --mode step or epoch")
    if args.breakdown and args.mode != "step":
        raise InputError("--breakdown profiles the training step: use it with --mode step")
    if args.vs_torch:
        try:
            import torch  # noqa: F401  (optional: only for --vs-torch)
        except ImportError:
            raise InputError(TORCH_HINT) from None


def command(args: argparse.Namespace) -> None:
    report = run(args)
    print(json.dumps(report) if args.json else "\n".join(format_summary(report)))


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), command, argv, before_platform=prepare)


if __name__ == "__main__":
    sys.exit(main())
