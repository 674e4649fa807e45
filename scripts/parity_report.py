"""Prints the measured columns of the parity table (docs/guides/pytorch.md), per convolution
implementation.

    python scripts/parity_report.py [xla,matmul,winograd]

The same comparisons as tests/test_torch_port.py, with the largest deviation from PyTorch's
float64 results printed instead of checked against the tolerance: eval and train mode
outputs (mean, stddev, reconstruction probabilities; absolute), the batch loss (relative),
the BatchNorm running statistics after one step (absolute), the parameters' first Adam step
(absolute, without the biases before a BatchNorm and the few tiny-gradient weights the test
exempts) and the 20-step loss curve (relative).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import test_torch_port as parity  # noqa: E402
from vae_jax.interop.torch_port import from_torch_state_dict  # noqa: E402

OUTPUTS = ("recon", "mean", "stddev")


def report(implementation: str, golden: dict) -> str:
    state_dict = parity._section(golden, "state_dict/")
    variables = from_torch_state_dict(state_dict)
    runner = parity.get_runner(implementation)
    evaluated = runner.evaluate(variables, golden["images"], golden["eps"])
    state, (*trained, loss, _) = runner.train_step(runner.new_state(variables),
                                                   golden["images"], golden["eps"])
    params, batch_stats = state.params, state.batch_stats

    def outputs(values, mode):
        return max(np.abs(np.asarray(value) - golden[f"{mode}/{name}"]).max()
                   for value, name in zip(values, OUTPUTS))

    def relative(value, mode):
        return abs(float(value) / golden[f"{mode}/loss"] - 1)

    running = parity._as_state_dict(variables["params"], batch_stats)
    running_error = max(np.abs(running[key] - expected).max()
                        for key, expected in parity._section(golden, "after_forward/").items())
    stepped = parity._as_state_dict(params, batch_stats)
    adam_error = 0.0
    for key, step in parity._section(golden, "adam_step/").items():
        if key in parity.BIASES_BEFORE_BATCHNORM:
            continue
        checked = ~parity.tiny_gradient(step)
        ours = stepped[key].astype(np.float64) - state_dict[key]
        adam_error = max(adam_error, np.abs(ours - step)[checked].max())
    curve = runner.run_curve(variables, golden["curve_images"], golden["curve_eps"])
    curve_error = np.abs(curve / golden["curve_losses"] - 1).max()
    return (f"{implementation}: eval {outputs(evaluated[:3], 'eval'):.2g} "
            f"(loss {relative(evaluated[3], 'eval'):.1g} relative), "
            f"train {outputs(trained, 'train'):.2g} (loss {relative(loss, 'train'):.1g} relative), "
            f"running statistics {running_error:.2g}, Adam step {adam_error:.2g}, "
            f"20-step curve {curve_error:.2g} relative")


def main(argv: list[str]) -> None:
    implementations = argv[0].split(",") if argv else ["xla", "matmul", "winograd"]
    with np.load(parity.GOLDEN) as data:
        golden = dict(data)
    for implementation in implementations:
        print(report(implementation, golden), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
