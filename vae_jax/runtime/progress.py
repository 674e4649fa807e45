"""The progress bar: tqdm's, drawn as text in a notebook without ipywidgets, where tqdm
would otherwise warn at import ("IProgress not found") on the learner's first screen."""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
