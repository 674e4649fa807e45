"""Data: 28x28 grayscale tfds splits as arrays (`input_pipeline.py`)."""
