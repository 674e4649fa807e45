"""How the convolutions are computed: `convolutions.py` chooses, `im2col.py` (matrix
multiplies with hand-written gradients), `winograd.py` and `batch_norm.py` compute."""
