"""PyTorch: the course notebook's model (`torch_reference.py`) and its weights to and from
vae-jax's (`torch_port.py`). torch is imported only when needed, never by the library."""
