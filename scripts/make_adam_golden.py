"""Regenerates tests/data/torch_adam_golden.npz: PyTorch's Adam over a sequence of gradients.

    python scripts/make_adam_golden.py [--out tests/data/torch_adam_golden.npz]

Needs torch. `torch.optim.Adam(lr=0.002)` (the course's optimizer, PyTorch's defaults:
betas 0.9/0.999, eps 1e-8, no weight decay) takes STEPS steps in float64 on one parameter
vector, each step with a given gradient. The gradients' scale changes from step to step (from
1e-4 to 50), so the steps depend on both betas, on eps, on the absence of weight decay and of
clipping: an optimizer that differs in any of them ends elsewhere. A single step could not
tell: a first Adam step is -lr * g / (|g| + eps) whatever the betas.

Schema (float64): `initial` (N,), `gradients` (STEPS, N), `params` (STEPS, N) the parameter
after each step. The file is a few KB.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vae_jax.training.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "data" / "torch_adam_golden.npz"
SIZE, STEPS, SEED = 64, 30, 0
SCALES = (1.0, 1e-4, 50.0, 0.3, 3.0, 1e-2)  # the gradients' scale, step after step, cycled
LR = TrainConfig().learning_rate  # the course's 0.002


def main(argv=None) -> None:
    import torch
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(SEED)
    initial = rng.normal(0.0, 3.0, SIZE)  # large weights: weight decay would show
    gradients = np.stack([SCALES[step % len(SCALES)] * rng.normal(size=SIZE)
                          for step in range(STEPS)])
    parameter = torch.nn.Parameter(torch.tensor(initial, dtype=torch.float64))
    optimizer = torch.optim.Adam([parameter], lr=LR)
    params = []
    for gradient in gradients:
        parameter.grad = torch.tensor(gradient, dtype=torch.float64)
        optimizer.step()
        params.append(parameter.detach().numpy().copy())
    np.savez_compressed(args.out, initial=initial, gradients=gradients, params=np.stack(params))
    print(f"{args.out}: {STEPS} Adam steps on {SIZE} parameters")


if __name__ == "__main__":
    main()
