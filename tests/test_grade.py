"""`vae-jax-grade`: notebooks run in fresh kernels and graded exercise by exercise; a bad
file is one line and exit code 2; the notebooks are never changed."""

import json
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tests.helpers import snapshot
from vae_jax import exercises
from vae_jax.commands import grade as grade_command
from vae_jax.exercises import grading
from vae_jax.exercises.result import CheckResult

NAMES = list(exercises.names())
IMPORTS = "import jax\nimport jax.numpy as jnp"
FLIPPED_KL = ("def kl(mean, stddev):\n"
              "    return -(0.5 * (mean**2 + stddev**2) - jnp.log(stddev) - 0.5).sum(-1)")
TIME_LIMIT = 25  # seconds for a notebook's cells


def _notebook(path, sources):
    cells = [new_markdown_cell("# my exercises"), new_code_cell(IMPORTS)]
    nbformat.write(new_notebook(cells=cells + [new_code_cell(s) for s in sources]), path)
    return str(path)


def _class_of_three(directory):
    """All correct; one mistake (the KL's sign, which loss and train_step inherit); a cell
    that raises and one that loops forever before sample and iwae are defined."""
    solutions = {name: exercises.solution(name) for name in NAMES}
    right = _notebook(directory / "all_right.ipynb", [solutions[n] for n in NAMES])
    mistake = _notebook(directory / "one_mistake.ipynb",
                        [FLIPPED_KL if n == "kl" else solutions[n] for n in NAMES])
    hangs = _notebook(directory / "raises_and_hangs.ipynb",
                      [solutions[n] for n in NAMES[:3]] + ["1 / 0"]
                      + [solutions[n] for n in NAMES[3:6]] + ["while True:\n    pass"]
                      + [solutions[n] for n in NAMES[6:]])
    return right, mistake, hangs


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "not a Jupyter notebook (NotJSONError)"),
    ('{"cells": 3}', "not a Jupyter notebook ("),
])
def test_a_missing_file_or_one_that_is_not_a_notebook_is_one_line_and_exit_2(
        tmp_path, capsys, content, message):
    path = tmp_path / "student.ipynb"
    if content is not None:
        path.write_text(content)
    good = _notebook(tmp_path / "good.ipynb", [exercises.solution("kl")])
    assert grade_command.main([good, str(path)]) == 2  # refused before anything runs
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"python -m vae_jax.commands.grade: error: {path}: "
                                        f"{message}")
    assert err.count("\n") == 1


def test_a_folder_is_refused(tmp_path, capsys):
    assert grade_command.main([str(tmp_path)]) == 2
    assert "is a folder, not a notebook" in capsys.readouterr().err


def test_the_check_reports_what_the_kernel_defines(capsys):
    from vae_jax.exercises import solutions
    grading.report_check("kl", {"kl": solutions.kl})
    grading.report_check("iwae", {})
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line.removeprefix(grading.MARKER)) for line in lines] == [
        {"name": "kl", "passed": True, "hint": ""},
        {"name": "iwae", "passed": False, "hint": "the notebook defines no function named iwae"}]


def test_the_table_has_a_row_per_notebook_and_the_hints_below():
    passed = [CheckResult(name, True) for name in NAMES]
    one_wrong = [CheckResult(name, name != "kl", "the sign is flipped" * (name == "kl"))
                 for name in NAMES]
    grades = [grading.NotebookGrade("class/alice.ipynb", passed),
              grading.NotebookGrade("class/bob.ipynb", one_wrong, ["cell 3 raised ValueError"],
                                    "the notebook ran past its 60 s limit in cell 9")]
    lines = grading.format_table(grades).splitlines()
    assert lines[0].split() == ["notebook", *NAMES, "passed"]
    assert lines[1].split() == ["alice.ipynb"] + ["pass"] * 8 + ["8/8"]
    assert lines[2].split() == ["bob.ipynb", "pass", "pass", "[1]"] + ["pass"] * 5 + ["7/8"]
    assert lines[4:] == ["[1] bob.ipynb, kl: the sign is flipped", "",
                         "bob.ipynb: cell 3 raised ValueError",
                         "bob.ipynb: the notebook ran past its 60 s limit in cell 9"]


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    directory = tmp_path_factory.mktemp("class")
    paths = _class_of_three(directory)
    before = snapshot(directory)
    result = subprocess.run(
        [sys.executable, "-m", "vae_jax.commands.grade", *paths, "--json",
         "--timeout", str(TIME_LIMIT), "--check-timeout", "90"],
        capture_output=True, text=True, timeout=600)
    return result, before, snapshot(directory)


@pytest.mark.slow(reason="runs three notebooks in kernels")
def test_the_grader_grades_a_class_of_three(graded_class):
    result, before, after = graded_class
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "nothing but the JSON: no kernel or nbclient log lines"
    assert before == after, "the graded notebooks are never changed"
    report = json.loads(result.stdout)
    assert report["exercises"] == NAMES
    right, mistake, hangs = report["notebooks"]
    assert (right["passed"], right["cell_errors"], right["stopped"]) == (8, [], "")
    hints = {name: entry["hint"] for name, entry in mistake["exercises"].items()
             if not entry["passed"]}
    assert list(hints) == ["kl", "loss", "train_step"]  # loss and train_step use the kl
    assert hints["kl"].startswith("the sign is flipped")
    assert hints["train_step"].endswith("make its check pass first")
    # The cell that raises is noted, the loop is stopped at the limit, and what was defined
    # before it is graded.
    assert hangs["cell_errors"] == ["cell 5 raised ZeroDivisionError: division by zero"]
    assert hangs["stopped"] == f"the notebook ran past its {TIME_LIMIT} s limit in cell 9 " \
                               f"and was stopped"
    assert [name for name, entry in hangs["exercises"].items() if entry["passed"]] == NAMES[:6]
    assert hangs["exercises"]["sample"]["hint"] == "the notebook defines no function named sample"
    assert hangs["seconds"] < TIME_LIMIT + 8 * 90


@pytest.mark.slow(reason="runs a notebook in a kernel")
def test_a_check_that_never_returns_is_stopped_and_reported(tmp_path):
    path = _notebook(tmp_path / "slow_kl.ipynb", ["def kl(mean, stddev):\n    while True:\n"
                                                  "        pass"])
    notebook = grading.read_notebook(path)
    grade = grading.grade_notebook(path, notebook, time_limit=60, check_time_limit=5)
    kl = next(result for result in grade.results if result.name == "kl")
    assert kl.hint == "the check did not finish within 5 s: does kl loop forever?"
    others = [result.hint for result in grade.results if result.name != "kl"]
    assert all(hint.startswith("the notebook defines no function named") for hint in others)
