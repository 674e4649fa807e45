"""Where the computation runs: `mesh.py` (the devices as one data-parallel mesh),
`distributed.py` (many processes), `platforms.py` (--platform), `hugepages.py`,
`native_output.py` (native libraries' log lines off the screen), `interrupts.py` (Ctrl-C
never lost), `progress.py` (tqdm's bar, quiet in a notebook) and `errors.py`."""
