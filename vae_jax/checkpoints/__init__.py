"""What a run saves: `run_checkpoints.py` (orbax checkpoints of a training run),
`saved_model.py` (`save_variables`, `load_variables`, `load_model`), `digests.py`,
`quarantine.py` (damaged checkpoints set aside), `config_file.py` (config.json),
`metrics_file.py` (metrics.jsonl, read back),
`workdir.py` (the run directory, its lock and layout) and `orbax_logs.py`."""
