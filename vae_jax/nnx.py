"""The course's VAE in Flax NNX: `from vae_jax import nnx as vae_nnx`.

`vae_nnx.VAE(z_dim=32, rngs=nnx.Rngs(0))` is the linen `vae_jax.VAE` as an `nnx.Module`;
`from_linen(variables)` and `to_linen(model)` move weights between the two (a `train.py`
checkpoint loads with `vae_nnx.from_linen(vae_jax.load_variables(workdir))`), and
`make_optimizer` with `train_step` train it as the linen trainer does.
"""

from vae_jax.model.nnx_vae import (
                                   VAE,
                                   BatchNorm,
                                   Conv2d,
                                   ConvTranspose2d,
                                   Decoder,
                                   Encoder,
                                   from_linen,
                                   to_linen,
)
from vae_jax.training.nnx_steps import make_optimizer, train_step

__all__ = ["VAE", "Encoder", "Decoder", "Conv2d", "ConvTranspose2d", "BatchNorm", "from_linen",
           "to_linen", "make_optimizer", "train_step"]
