"""The machine's floor: how fast a large float32 matrix multiply runs, and how many floating
point operations a compiled function does, so a benchmark can say how near the floor it is.

    floor seconds = flops / matmul_flops_per_second()

The VAE's time goes almost all into matrix multiplies (docs/guides/performance.md), so the
matmul rate of the device is the speed limit that its steps can be held to.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

MATMUL_SIZE = 4096  # a 4096 x 4096 x 4096 product: 137 GFLOP, past every cache


def matmul_flops_per_second(size: int = MATMUL_SIZE, repeats: int = 5,
                            device: jax.Device | None = None) -> float:
    """The best rate of `repeats` float32 (size x size) @ (size x size) products, in FLOP/s.

    At full float32 precision (`Precision.HIGHEST`), as the VAE's matmuls run on a CPU; on a
    GPU that is slower than TF32, which XLA may use for the VAE's default-precision matmuls.
    """
    device = device or jax.devices()[0]
    a = jax.device_put(jnp.ones((size, size), jnp.float32), device)
    product = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST))
    product(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def compiled_flops(compiled: jax.stages.Compiled) -> float | None:
    """XLA's count of the floating point operations of one call of `compiled`, or None where
    the backend gives no cost analysis. Multiply-adds count 2; loops count every trip only
    where XLA knows the trip count."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - backends without a cost model
        return None
    if isinstance(analysis, (list, tuple)):  # one entry per computation in older JAX
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None
