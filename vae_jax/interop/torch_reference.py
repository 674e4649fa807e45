"""The course notebook's PyTorch VAE and loss: the reference that vae-jax is checked against.

For parity tooling (`scripts/make_torch_golden.py`) and side-by-side benchmarks
(`vae-jax-bench --vs-torch`) only. This module imports torch, which vae-jax itself never
needs: nothing imports it until asked to (`pip install torch==2.13.0`).

`course_vae()` has the notebook's structure, so its state_dict keys are the notebook's
(`encode.disc.0.0.weight`, `decode.gen.3.0.bias`, ...; `vae_jax.interop.torch_port` maps
them). The only addition is an optional `eps` argument to `forward`: with it the sample is
`mean + stddev * eps`, exactly what `Normal(mean, stddev).rsample()` computes with its own
eps ~ N(0, I).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions.kl import kl_divergence
from torch.distributions.normal import Normal


def course_vae(z_dim: int = 32, im_chan: int = 1) -> "VAE":
    """A new `VAE(z_dim, im_chan)` of the notebook (C2W2 "Variational Autoencoder")."""
    return VAE(z_dim=z_dim, im_chan=im_chan)


class Encoder(nn.Module):
    def __init__(self, im_chan=1, output_chan=32, hidden_dim=16):
        super().__init__()
        self.z_dim = output_chan
        self.disc = nn.Sequential(
            self.make_disc_block(im_chan, hidden_dim),
            self.make_disc_block(hidden_dim, hidden_dim * 2),
            self.make_disc_block(hidden_dim * 2, output_chan * 2, final_layer=True),
        )

    def make_disc_block(self, input_channels, output_channels, kernel_size=4, stride=2,
                        final_layer=False):
        if not final_layer:
            return nn.Sequential(
                nn.Conv2d(input_channels, output_channels, kernel_size, stride),
                nn.BatchNorm2d(output_channels),
                nn.LeakyReLU(0.2),
            )
        return nn.Sequential(nn.Conv2d(input_channels, output_channels, kernel_size, stride))

    def forward(self, image):
        disc_pred = self.disc(image)
        encoding = disc_pred.view(len(disc_pred), -1)
        # The original's comment says "the log of the variance"; exp() of it is used
        # as the standard deviation.
        return encoding[:, :self.z_dim], encoding[:, self.z_dim:].exp()


class Decoder(nn.Module):
    def __init__(self, z_dim=32, im_chan=1, hidden_dim=64):
        super().__init__()
        self.z_dim = z_dim
        self.gen = nn.Sequential(
            self.make_gen_block(z_dim, hidden_dim * 4),
            self.make_gen_block(hidden_dim * 4, hidden_dim * 2, kernel_size=4, stride=1),
            self.make_gen_block(hidden_dim * 2, hidden_dim),
            self.make_gen_block(hidden_dim, im_chan, kernel_size=4, final_layer=True),
        )

    def make_gen_block(self, input_channels, output_channels, kernel_size=3, stride=2,
                       final_layer=False):
        if not final_layer:
            return nn.Sequential(
                nn.ConvTranspose2d(input_channels, output_channels, kernel_size, stride),
                nn.BatchNorm2d(output_channels),
                nn.ReLU(inplace=True),
            )
        return nn.Sequential(
            nn.ConvTranspose2d(input_channels, output_channels, kernel_size, stride),
            nn.Sigmoid(),
        )

    def forward(self, noise):
        x = noise.view(len(noise), self.z_dim, 1, 1)
        return self.gen(x)


class VAE(nn.Module):
    def __init__(self, z_dim=32, im_chan=1, hidden_dim=64):  # hidden_dim is ignored
        super().__init__()
        self.z_dim = z_dim
        self.encode = Encoder(im_chan, z_dim)
        self.decode = Decoder(z_dim, im_chan)

    def forward(self, images, eps=None):
        q_mean, q_stddev = self.encode(images)
        q_dist = Normal(q_mean, q_stddev)
        # rsample() is loc + eps * scale with eps ~ N(0, I); a given eps fixes it.
        z_sample = q_dist.rsample() if eps is None else q_mean + q_stddev * eps
        decoding = self.decode(z_sample)
        return decoding, q_dist


def course_loss(reconstructions, images, q_dist):
    """The notebook's batch loss: BCELoss(reduction="sum") of the sigmoid outputs plus
    KL(q || N(0, I)) summed over latent dimensions and images."""
    prior = Normal(torch.zeros_like(q_dist.mean), torch.ones_like(q_dist.stddev))
    reconstruction = torch.nn.BCELoss(reduction="sum")(reconstructions, images)
    return reconstruction + kl_divergence(q_dist, prior).sum(-1).sum()
