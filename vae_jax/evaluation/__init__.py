"""Evaluation of a trained model: `elbo.py` (the negative ELBO pass), `likelihood.py` (the
IWAE bound and the full report), `pooling.py` (evaluations of parts pooled), `plots.py`,
`sampling.py` and `grids.py` (image grids)."""
