"""The course's VAE: what a learner came for.

* `vae.py`: the encoder, the decoder, the reparameterization trick and the VAE;
* `layers.py`: Conv2d, ConvTranspose2d and BatchNorm with PyTorch's semantics;
* `losses.py`: the loss, binary cross-entropy plus KL, in nats;
* `iwae.py`: the importance-weighted bound on log p(x);
* `binarize.py`: Bernoulli draws of grayscale images, for likelihoods of binary images;
* `metrics.py`: the KL per latent dimension and the active units;
* `nnx_vae.py`: the same VAE as Flax NNX modules (re-exported as `vae_jax.nnx`).
"""
