"""vae-jax: the DeepLearning.AI GANs course's convolutional VAE in JAX/Flax."""

from vae_jax.checkpoints import load_model, load_variables, save_variables
from vae_jax.models import VAE, Decoder, Encoder, reparameterize

__all__ = ["VAE", "Decoder", "Encoder", "load_model", "load_variables", "reparameterize",
           "save_variables"]
