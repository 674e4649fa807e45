"""The latent-space explorer behind `vae-jax-explore`: `latent_space.py` (encode, decode,
walks and the latents' order, compiled once; no web code), `drawing.py` (a drawing on the
page as an MNIST-style 28x28 image), `figures.py` (the posterior beside the prior, as a
picture) and `page.py` (the gradio page over them). Needs the `explore` extra for the page:
`pip install -e '.[explore]'`."""
