"""The timed computations: the JAX training step, scan epoch or IWAE pass (`JaxRunner`),
the PyTorch original's step or epoch (`TorchRunner`), and the clocks and memory gauges.

torch is imported only for `TorchRunner` (`pip install torch==2.13.0`).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.benchmarks.roofline import compiled_flops
from vae_jax.evaluation import likelihood
from vae_jax.model.vae import IMAGE_SIZE, VAE
from vae_jax.training.config import TrainConfig
from vae_jax.training.steps import make_train_epoch, make_train_step
from vae_jax.training.train_state import RunKeys, create_train_state, make_optimizer

TORCH_HINT = "--vs-torch needs PyTorch: pip install torch==2.13.0"
LEARNING_RATE = TrainConfig().learning_rate  # the course's


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
        step_fn, seconds = _compile(make_train_step(parallel=args.parallel,
                                                    objective=args.training_objective),
                                    state, *inputs)
        return cls(implementation, seconds, step_fn, state, inputs, len(images),
                   compiled_flops(step_fn))

    @classmethod
    def _train_epoch(cls, implementation, images, args) -> "JaxRunner":
        """`train.py --epoch-mode scan`'s epoch: the whole training set on the device, one call."""
        state = _initial_state(implementation, args)
        inputs = (args.parallel.replicate(images), RunKeys.from_seed(args.seed).train)
        epoch_fn = make_train_epoch(args.batch_size, parallel=args.parallel,
                                    objective=args.training_objective)
        step_fn, seconds = _compile(epoch_fn, state, *inputs)
        return cls(implementation, seconds, step_fn, state, inputs, len(images), None)

    @classmethod
    def _iwae(cls, implementation, images, args) -> "JaxRunner":
        """`vae_jax.evaluation`'s IWAE pass over one batch, with its default chunking.

        The state is the initialised model's variables; the time per decode does not
        depend on their values."""
        model = VAE(implementation=implementation)
        variables = args.parallel.replicate(_initial_state(implementation, args).variables)
        mean, stddev = jax.jit(lambda v, x: model.apply(v, x, train=False,
                                                        method=VAE.encode))(variables, images)
        chunk = likelihood.default_chunk_size(args.iwae_samples, len(images))
        start = time.perf_counter()
        step_fn = likelihood.iwae_step(model, images.shape, args.iwae_samples, chunk,
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
    flops = compiled_flops(likelihood.jitted_decoder(model).lower(variables, latents).compile())
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
    """The PyTorch original's training (`vae_jax.interop.torch_reference`: the course notebook's
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
        from vae_jax.interop import torch_reference  # imports torch: only when asked for

        self.course_loss = torch_reference.course_loss
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
        loss = self.course_loss(reconstructions, images, q_dist)
        loss.backward()
        self.optimizer.step()
        loss.item()


def summarize(times: list[float], batch_size: int) -> dict:
    ms = 1e3 * statistics.median(times)
    return {"ms_per_step": round(ms, 2), "images_per_sec": round(batch_size / ms * 1e3, 1),
            "ms_per_step_min": round(1e3 * min(times), 2)}
