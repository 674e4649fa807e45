"""Runs a notebook top to bottom and stores its outputs in place, as committed.

    TFDS_DATA_DIR=../shared/tensorflow_datasets python scripts/execute_notebook.py \
        notebooks/vae_course_in_jax.ipynb

Prints each cell's seconds and the total. Progress bars are stored as a terminal shows them
(each bar's last state, not every redraw), so the stored outputs stay small.
"""

import argparse
import datetime
import os
import time

import nbclient
import nbformat


def as_shown(text: str) -> str:
    """Stream text with its carriage returns resolved: each line's last non-blank state."""
    lines = []
    for line in text.split("\n"):
        states = [state for state in line.split("\r") if state.strip()]
        if states:
            lines.append(states[-1])
    return "\n".join(lines) + "\n" if lines else ""


def coalesce(outputs: list) -> list:
    """Consecutive outputs of one stream merged, and shown as a terminal would."""
    merged = []
    for output in outputs:
        if (output.output_type == "stream" and merged
                and merged[-1].output_type == "stream" and merged[-1].name == output.name):
            merged[-1].text += output.text
        else:
            merged.append(output)
    for output in merged:
        if output.output_type == "stream":
            output.text = as_shown(output.text)
    return [output for output in merged if output.output_type != "stream" or output.text]


def seconds(cell) -> float:
    times = cell.metadata.get("execution", {})
    start, end = (datetime.datetime.fromisoformat(times[name].rstrip("Z"))
                  for name in ("iopub.execute_input", "shell.execute_reply"))
    return (end - start).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()
    path = args.notebook
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=args.timeout,
                            kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": os.path.dirname(path) or "."}}
                            ).execute()
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            print(f"cell {index:2d}  {seconds(cell):6.1f} s  {cell.source.splitlines()[0][:60]}")
            cell.outputs = coalesce(cell.outputs)
            cell.metadata.pop("execution", None)
    print(f"total {time.perf_counter() - start:.1f} s")
    nbformat.write(notebook, path)


if __name__ == "__main__":
    main()
