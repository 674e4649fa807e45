"""Training: `config.py` (the settings), `train_state.py` (the state and the run's keys),
`steps.py` (the jitted step and epoch), `loop.py` (`train_and_evaluate`), `hooks.py` (what
runs after each step), `writers.py` (metrics, TensorBoard, pictures) and `resume.py` (the
train state into a checkpoint and back)."""
