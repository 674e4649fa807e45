"""Benchmarks (`vae-jax-bench`): `runners.py` (the timed JAX and PyTorch computations),
`suite.py` (what a benchmark run measures and reports), `roofline.py` (the floor),
`op_profile.py` (where a step's time goes). Not loaded by `import vae_jax`."""
