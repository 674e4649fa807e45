"""Grading a class's notebooks: each runs in its own fresh kernel, then every exercise's
check runs there on the function the notebook defines.

    grades = grade(["alice.ipynb", "bob.ipynb"], time_limit=600)
    print(format_table(grades))

A notebook's cells run top to bottom in a new temporary folder, with errors allowed (a
cell that raises is noted and the next one runs), within `time_limit` seconds for the
whole notebook: a cell still running then is interrupted, the cells after it are skipped,
and the exercises are graded on what was defined. Each check has `check_time_limit`
seconds of its own, so a learner's function that never returns fails its check alone.
The notebooks' files are read, never written. `vae-jax-grade` is the command line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import tempfile
import time

from vae_jax.exercises.registry import names
from vae_jax.exercises.result import CheckResult
from vae_jax.runtime.errors import InputError

MARKER = "vae-jax-grade-result: "
CHECK_CELL = ("from vae_jax.exercises.grading import report_check as _vae_jax_report_check\n"
              "_vae_jax_report_check({name!r}, globals())")
KERNEL_START_SECONDS = 120
TIMING_SLACK = 0.5  # seconds: a cell that ran this close to its limit was interrupted
# nbclient's own log (a timeout, the interrupt) stays off the screen: the grade says it.
_QUIET = logging.getLogger("vae_jax.exercises.grading.nbclient")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclasses.dataclass
class NotebookGrade:
    """One notebook's grade: a `CheckResult` per exercise, the cells that raised, and why it
    stopped early (`stopped`, empty when every cell ran)."""

    notebook: str
    results: list[CheckResult]
    cell_errors: list[str] = dataclasses.field(default_factory=list)
    stopped: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(result.passed for result in self.results)

    def as_dict(self) -> dict:
        return {"notebook": self.notebook, "passed": self.passed, "total": len(self.results),
                "exercises": {result.name: {"passed": result.passed, "hint": result.hint}
                              for result in self.results},
                "cell_errors": self.cell_errors, "stopped": self.stopped,
                "seconds": round(self.seconds, 1)}


def report_check(name: str, namespace: dict) -> None:
    """Runs in the graded notebook's kernel: checks the function `name` that the notebook
    defined and prints the result on one marked line for the grader."""
    from vae_jax import exercises
    function = namespace.get(name)
    result = (CheckResult(name, False, f"the notebook defines no function named {name}")
              if function is None else exercises.check(name, function))
    print(MARKER + json.dumps(result.as_dict()), flush=True)


def read_notebook(path: str):
    """The notebook at `path` (nbformat's, version 4); InputError in one line if it is
    missing or is not a notebook."""
    import nbformat
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not a notebook")
    try:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
    except Exception as error:  # noqa: BLE001 - JSON, schema and encoding errors alike
        raise InputError(f"{path}: not a Jupyter notebook ({type(error).__name__})") from None
    return notebook


def grade(paths: list[str], *, time_limit: float, check_time_limit: float,
          log=None) -> list[NotebookGrade]:
    """Grades each notebook in `paths` (all are read first: a bad one is an InputError
    before anything runs). `log(line)` hears of each notebook as it is graded."""
    notebooks = [(path, read_notebook(path)) for path in paths]
    grades = []
    for path, notebook in notebooks:
        if log:
            log(f"grading {path} ...")
        grades.append(grade_notebook(path, notebook, time_limit=time_limit,
                                     check_time_limit=check_time_limit))
    return grades


def grade_notebook(path: str, notebook, *, time_limit: float,
                   check_time_limit: float) -> NotebookGrade:
    """Runs `notebook` (read from `path`) in a fresh kernel and checks its exercises."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError
    from nbformat.v4 import new_code_cell

    start = time.monotonic()
    grade = NotebookGrade(path, [])
    with tempfile.TemporaryDirectory(prefix="vae-jax-grade-") as workdir:
        client = NotebookClient(
            notebook, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
            error_on_timeout={"ename": "TimeoutError", "evalue": "the time limit passed",
                              "traceback": []},
            startup_timeout=KERNEL_START_SECONDS, resources={"metadata": {"path": workdir}},
            log=_QUIET)
        try:
            # The kernel's own stderr (its start-up notices) stays off the screen; what its
            # cells write to stderr still reaches their outputs.
            with client.setup_kernel(stderr=subprocess.DEVNULL):
                _run_cells(client, notebook, grade, start + time_limit, time_limit)
                for name in names():
                    cell = new_code_cell(CHECK_CELL.format(name=name))
                    client.timeout = max(1, math.ceil(check_time_limit))
                    notebook.cells.append(cell)  # the copy in memory, never the file
                    check_start = time.monotonic()
                    client.execute_cell(cell, len(notebook.cells) - 1)
                    timed_out = time.monotonic() - check_start >= client.timeout - TIMING_SLACK
                    grade.results.append(_result_of(cell, name, check_time_limit, timed_out))
        except DeadKernelError:
            grade.stopped = grade.stopped or "the kernel died (out of memory, or os._exit)"
        except RuntimeError as error:  # the kernel did not start
            grade.stopped = f"the kernel did not start: {error}"
    graded = {result.name for result in grade.results}
    grade.results += [CheckResult(name, False, f"not graded: {grade.stopped}")
                      for name in names() if name not in graded]
    grade.seconds = time.monotonic() - start
    return grade


def _run_cells(client, notebook, grade: NotebookGrade, deadline: float,
               time_limit: float) -> None:
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        remaining = deadline - time.monotonic()
        if remaining < 1:
            grade.stopped = f"the notebook ran past its {time_limit:g} s limit before cell {index}"
            return
        client.timeout = math.ceil(remaining)
        client.execute_cell(cell, index)
        errors = [output for output in cell.outputs if output.output_type == "error"]
        if time.monotonic() >= deadline - TIMING_SLACK:  # interrupted at the limit
            grade.stopped = (f"the notebook ran past its {time_limit:g} s limit in cell {index} "
                             f"and was stopped")
            return
        if errors:
            grade.cell_errors.append(f"cell {index} raised {_error_line(errors[0])}")


def _result_of(cell, name: str, check_time_limit: float, timed_out: bool) -> CheckResult:
    text = "".join(output.get("text", "") for output in cell.outputs
                   if output.output_type == "stream")
    for line in text.splitlines():
        if line.startswith(MARKER):
            fields = json.loads(line[len(MARKER):])
            return CheckResult(fields["name"], fields["passed"], fields["hint"])
    errors = [output for output in cell.outputs if output.output_type == "error"]
    if errors and not timed_out:
        return CheckResult(name, False, f"the check could not run: {_error_line(errors[0])}")
    return CheckResult(name, False, f"the check did not finish within {check_time_limit:g} s: "
                                    f"does {name} loop forever?")


def _error_line(error) -> str:
    """An error output of a cell as one line: `Name: the message's first line`."""
    message = (str(error.get("evalue") or "").splitlines() or [""])[0][:120]
    return f"{error.ename}: {message}" if message else error.ename


def format_table(grades: list[NotebookGrade]) -> str:
    """One row per notebook, one column per exercise (pass, or a numbered hint listed
    below the table), and the notes: cells that raised, and notebooks stopped early."""
    exercise_names = list(names())
    header = ["notebook", *exercise_names, "passed"]
    rows, hints, notes = [], [], []
    for grade in grades:
        row = [os.path.basename(grade.notebook)]
        for result in grade.results:
            if result.passed:
                row.append("pass")
            else:
                hints.append(f"[{len(hints) + 1}] {os.path.basename(grade.notebook)}, "
                             f"{result.name}: {result.hint}")
                row.append(f"[{len(hints)}]")
        row.append(f"{grade.passed}/{len(grade.results)}")
        rows.append(row)
        for error in grade.cell_errors:
            notes.append(f"{os.path.basename(grade.notebook)}: {error}")
        if grade.stopped:
            notes.append(f"{os.path.basename(grade.notebook)}: {grade.stopped}")
    widths = [max(len(str(line[column])) for line in [header, *rows])
              for column in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in [header, *rows]]
    if hints:
        lines += ["", *hints]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)
