"""Data: 28x28 grayscale tfds splits as arrays (`input_pipeline.py`), or the same from a
NumPy .npz file without TensorFlow (`arrays.py`)."""
