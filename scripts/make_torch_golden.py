"""Regenerates tests/data/torch_golden.npz: the course's PyTorch VAE, run on fixed inputs.

    python scripts/make_torch_golden.py [--out tests/data/torch_golden.npz] [--synthetic]

Needs torch (and tensorflow-datasets with the prepared MNIST under
/work/shared/tensorflow_datasets or $TFDS_DATA_DIR for real digits; `--synthetic`, or a
failed load, uses random images in [0, 1] instead). The model is the course notebook's,
`vae_jax.interop.torch_reference.course_vae`, so the state_dict keys are the notebook's
(`encode.disc.0.0.weight`, `decode.gen.3.0.bias`, ...), and its `eps` argument fixes the
sample's noise: `mean + stddev * eps` is what `Normal(mean, stddev).rsample()` computes. The run
is deterministic (fixed seeds, one thread, deterministic algorithms): rerunning the script
rewrites the same numbers on the same machine. The file is about 3.4 MB.

What the script does:
  1. seeds torch (0), builds VAE(), and "pretrains" it in float32 for PRETRAIN_STEPS Adam
     steps (lr 0.002, torch's own rsample noise) on MNIST batches that the tests do not use,
     so the BatchNorm running statistics and the weights are non-trivial;
  2. snapshots the state_dict (`state_dict/...`, float32 as trained);
  3. from the snapshot, converted to float64: a forward pass in eval mode and one in train
     mode on `images` with noise `eps` (the train-mode pass updates the BatchNorm running
     statistics: `after_forward/...`), then backward and one step of a *fresh*
     Adam(lr=0.002) (`adam_step/...`);
  4. from the snapshot again (float64, fresh Adam): 20 training steps on `curve_images[k]`
     with noise `curve_eps[k]`, recording each step's loss (computed before its update).

Why float64 for the reference values: PyTorch's own float32 CPU forward pass in train mode
is off the exact result by up to ~2e-5 (its BatchNorm batch statistics are the main source;
the error depends on the thread count: ~1.8e-5 on the encoder's stddev with 1 thread, ~5e-6
with 2), while vae-jax in float32 stays within ~1e-6. Comparing float32 with float32 would
test PyTorch's rounding, not the port. The float64 run is the same model and the same
operations with the same (float32) weights, inputs and noise; its results are stored as
float32. PyTorch's float32 train-mode outputs are kept under `torch_float32/` for reference.

Schema (every array float32; images are NHWC, i.e. already in vae-jax's layout; the torch
inputs were their NCHW transposes; B = 16, Z = 32, STEPS = 20):
  state_dict/<key>        the snapshot: every key of `VAE().state_dict()` with its PyTorch
                          shape, except `num_batches_tracked` (an integer count, unused here)
  images                  (B, 28, 28, 1) MNIST train images 0..15, pixels in [0, 1]
  eps                     (B, Z) the noise of the sample z = mean + stddev * eps
  eval/mean, eval/stddev  (B, Z) encoder outputs in eval mode (running statistics)
  eval/recon              (B, 28, 28, 1) decoder output probabilities (after the sigmoid)
  eval/loss               () BCELoss(reduction='sum') + KL summed over dims and images
  train/mean, train/stddev, train/recon, train/loss   the same in train mode (batch stats)
  after_forward/<key>     running_mean / running_var of every BatchNorm after that one
                          train-mode forward pass (momentum 0.1, unbiased batch variance)
  grads/<key>             d train/loss / d parameter, for the 1-D parameters only (biases,
                          BatchNorm weights): the conv biases that precede a BatchNorm have
                          zero gradient (up to rounding)
  adam_step/<key>         parameter after minus before one step of a fresh Adam(0.002), for
                          every trainable parameter (so after = state_dict + adam_step)
  curve_images            (STEPS, B, 28, 28, 1) the batches of the 20-step run (MNIST
                          train images 0..319; the first batch is `images`)
  curve_eps               (STEPS, B, Z) their noise (the first is not `eps`)
  curve_losses            (STEPS,) the loss of each step, before its update
  torch_float32/train/{mean,stddev,recon,loss}   PyTorch's float32 train-mode outputs for
                          `images`, `eps` (single thread), for comparison only
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from vae_jax.interop.torch_reference import course_loss, course_vae
from vae_jax.training.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "data" / "torch_golden.npz"
DEFAULT_DATA_DIR = "/work/shared/tensorflow_datasets"

SEED = 0
BATCH = 16
Z_DIM = 32
PRETRAIN_STEPS = 10
CURVE_STEPS = 20
LR = TrainConfig().learning_rate  # the course's Adam learning rate, 0.002


def load_images(count: int, synthetic: bool) -> np.ndarray:
    """(count, 28, 28, 1) float32 in [0, 1]: the first MNIST train images, or random ones."""
    if not synthetic:
        try:
            import tensorflow_datasets as tfds  # here: any failure falls back to synthetic

            data_dir = os.environ.get("TFDS_DATA_DIR", DEFAULT_DATA_DIR)
            data = tfds.load("mnist", split=f"train[:{count}]", batch_size=-1,
                             data_dir=data_dir, download=False)
            images = np.asarray(data["image"], np.float32) / 255.0
            print(f"MNIST: {images.shape} from {data_dir}")
            return images
        except Exception as error:  # noqa: BLE001 - any failure falls back to synthetic data
            print(f"MNIST unavailable ({type(error).__name__}: {error}); using synthetic images")
    rng = np.random.default_rng(SEED)
    return rng.uniform(0.0, 1.0, (count, 28, 28, 1)).astype(np.float32)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--synthetic", action="store_true", help="random images, not MNIST")
    args = parser.parse_args(argv)

    all_images = load_images(BATCH * (CURVE_STEPS + PRETRAIN_STEPS), args.synthetic)
    curve_images = all_images[:BATCH * CURVE_STEPS].reshape(CURVE_STEPS, BATCH, 28, 28, 1)
    pretrain_images = all_images[BATCH * CURVE_STEPS:].reshape(
        PRETRAIN_STEPS, BATCH, 28, 28, 1)
    images = curve_images[0]

    import torch  # after loading the images: tfds' TensorFlow and torch both start thread pools

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    model = course_vae(Z_DIM)

    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    nhwc = lambda t: np.ascontiguousarray(  # noqa: E731
        t.detach().numpy().transpose(0, 2, 3, 1).astype(np.float32))

    # 1. Pretraining, so that running statistics and weights are not the initial ones.
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for batch in pretrain_images:
        x = nchw(batch)
        optimizer.zero_grad()
        recon, q_dist = model(x)
        course_loss(recon, x, q_dist).backward()
        optimizer.step()

    # 2. Snapshot (float32, as trained).
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict[str, np.ndarray] = {
        f"state_dict/{k}": v.numpy().astype(np.float32)
        for k, v in snapshot.items() if not k.endswith("num_batches_tracked")}

    generator = torch.Generator().manual_seed(SEED + 1)
    eps = torch.randn(BATCH, Z_DIM, generator=generator)
    curve_eps = torch.randn(CURVE_STEPS, BATCH, Z_DIM, generator=generator)
    out["images"] = images.astype(np.float32)
    out["eps"] = eps.numpy()
    out["curve_images"] = curve_images.astype(np.float32)
    out["curve_eps"] = curve_eps.numpy()

    # For information: PyTorch's own float32 train-mode forward pass from the snapshot.
    model.train()
    with torch.no_grad():
        x = nchw(images)
        recon, q_dist = model(x, eps)
        loss = course_loss(recon, x, q_dist)
    out.update({"torch_float32/train/mean": q_dist.mean.numpy().copy(),
                "torch_float32/train/stddev": q_dist.stddev.numpy().copy(),
                "torch_float32/train/recon": nhwc(recon),
                "torch_float32/train/loss": np.float32(loss.item())})

    # From here on the same model in float64: the reference values without rounding noise.
    def fresh_float64_model():
        m = course_vae(Z_DIM)
        m.load_state_dict(snapshot)
        return m.double()

    f64 = lambda t: t.double()  # noqa: E731
    f32 = lambda t: t.detach().numpy().astype(np.float32)  # noqa: E731
    x, eps64 = f64(nchw(images)), f64(eps)

    # 3a. Eval mode (running statistics).
    model = fresh_float64_model().eval()
    with torch.no_grad():
        recon, q_dist = model(x, eps64)
        loss = course_loss(recon, x, q_dist)
    out.update({"eval/mean": f32(q_dist.mean), "eval/stddev": f32(q_dist.stddev),
                "eval/recon": nhwc(recon), "eval/loss": np.float32(loss.item())})

    # 3b. Train mode: forward (updates running stats), backward, one step of a fresh Adam.
    model = fresh_float64_model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    optimizer.zero_grad()
    recon, q_dist = model(x, eps64)
    loss = course_loss(recon, x, q_dist)
    out.update({"train/mean": f32(q_dist.mean), "train/stddev": f32(q_dist.stddev),
                "train/recon": nhwc(recon), "train/loss": np.float32(loss.item())})
    for k, v in model.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            out[f"after_forward/{k}"] = f32(v)
    loss.backward()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    for k, p in model.named_parameters():
        if p.dim() == 1:
            out[f"grads/{k}"] = f32(p.grad)
    optimizer.step()
    for k, p in model.named_parameters():
        out[f"adam_step/{k}"] = f32(p.detach() - before[k])

    # 4. The 20-step loss curve, from the snapshot with a fresh Adam.
    model = fresh_float64_model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    losses = []
    for batch, batch_eps in zip(curve_images, curve_eps):
        x = f64(nchw(batch))
        optimizer.zero_grad()
        recon, q_dist = model(x, f64(batch_eps))
        loss = course_loss(recon, x, q_dist)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    out["curve_losses"] = np.asarray(losses, np.float32)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(out)} arrays); "
          f"train loss {out['train/loss']:.3f}, eval loss {out['eval/loss']:.3f}, "
          f"curve {losses[0]:.2f} -> {losses[-1]:.2f}")


if __name__ == "__main__":
    main()
