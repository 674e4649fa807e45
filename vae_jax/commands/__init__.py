"""The command lines: one thin module per command over the library, on one skeleton
(`cli.py`); `launch.py` holds the console scripts' entry points."""
