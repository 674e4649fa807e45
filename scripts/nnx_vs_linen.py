"""Times the NNX training step beside the linen one, interleaved, on the same batch.

    python scripts/nnx_vs_linen.py [--batch-size 1024] [--steps 10] [--rounds 3]
                                   [--implementation auto]

Both start from the same weights; each round times `--steps` steps of one, then of the
other (after two untimed compilation and warm-up steps each), and prints the median
milliseconds per step of every round and the ratio. It runs with huge pages for XLA's
buffers, as the commands do.
"""

import argparse
import statistics

import jax

import vae_jax
from vae_jax import nnx as vae_nnx
from vae_jax.benchmarks.runners import time_steps
from vae_jax.kernels.convolutions import resolve_implementation
from vae_jax.runtime import hugepages
from vae_jax.training import steps, train_state


def timed(step, count: int) -> float:
    """Median seconds of `count` calls of `step()`, each waited for."""
    return statistics.median(time_steps(lambda: jax.block_until_ready(step()), count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--implementation", default="auto")
    args = parser.parse_args()

    model = vae_jax.VAE(implementation=args.implementation)
    linen = train_state.create_train_state(model, train_state.make_optimizer(2e-3),
                                           jax.random.key(0), jax.random.key(1))
    nnx_model = vae_nnx.from_linen(jax.device_get(linen.variables),
                                   implementation=args.implementation)
    optimizer = vae_nnx.make_optimizer(nnx_model)
    images = jax.random.uniform(jax.random.key(2), (args.batch_size, 28, 28, 1))
    linen_step = steps.make_train_step()
    state = {"linen": linen, "key": jax.random.key(3)}

    def linen_call():
        state["linen"], metrics = linen_step(state["linen"], images)
        return metrics

    def nnx_call():
        metrics, state["key"] = vae_nnx.train_step(nnx_model, optimizer, images, state["key"])
        return metrics

    timed(linen_call, 2), timed(nnx_call, 2)  # compile and warm up
    rounds = {"linen": [], "nnx": []}
    for _ in range(args.rounds):
        rounds["linen"].append(1000 * timed(linen_call, args.steps))
        rounds["nnx"].append(1000 * timed(nnx_call, args.steps))
    for name, values in rounds.items():
        print(f"{name:5}: " + ", ".join(f"{value:.1f}" for value in values)
              + f" ms/step (median {statistics.median(values):.1f})")
    ratio = statistics.median(rounds["nnx"]) / statistics.median(rounds["linen"])
    print(f"nnx/linen: {ratio:.3f} ({jax.default_backend()}, batch {args.batch_size}, "
          f"implementation {resolve_implementation(args.implementation)})")


if __name__ == "__main__":
    hugepages.relaunch_with_huge_pages()  # as the commands run (docs/guides/performance.md)
    main()
