"""The exercises notebook: committed with its blanks, each exercise an explanation, a blank
function and a check; executed blank every check says "not implemented yet" and it runs to
the end; with the reference solutions filled in every check passes and the learner's step
trains the model (quick mode: a few images, one epoch; offline on tfds's mock MNIST)."""

import pathlib

import pytest

from tests.test_notebook import _mnist_is_prepared
from vae_jax import exercises
from vae_jax.exercises.answers import NOT_IMPLEMENTED

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = pathlib.Path(__file__).parent.parent / "notebooks" / "exercises.ipynb"


def _blanks(notebook):
    """{exercise name: its blank cell}."""
    return {cell.source.split("(")[0].removeprefix("def "): cell for cell in notebook.cells
            if cell.cell_type == "code" and "# YOUR CODE HERE" in cell.source}


def _text(notebook):
    return "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                   for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs)


def test_each_exercise_is_an_explanation_a_blank_function_and_a_check():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    blanks = _blanks(notebook)
    assert list(blanks) == list(exercises.names())
    sources = [cell.source for cell in notebook.cells]
    for name, cell in blanks.items():
        assert cell.source.rstrip().endswith("# YOUR CODE HERE\n    raise NotImplementedError")
        index = sources.index(cell.source)
        assert notebook.cells[index - 1].cell_type == "markdown"
        assert sources[index + 1] == f'exercises.check("{name}", {name})'


def test_the_learner_sees_the_vae_not_the_test_plumbing():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    assert "VAE_JAX" not in "".join(code)
    assert "Colab" in code[0] and len(code[0].splitlines()) <= 10


def test_the_committed_notebook_shows_the_blanks_checked():
    text = _text(nbformat.read(NOTEBOOK, as_version=4))
    for name in exercises.names():
        assert f"✗ {name}: {NOT_IMPLEMENTED}" in text
    assert "Traceback" not in text


def _execute(notebook, monkeypatch, tmp_path):
    monkeypatch.setenv("VAE_JAX_NOTEBOOK_QUICK", "1")
    if not _mnist_is_prepared():
        monkeypatch.setenv("VAE_JAX_NOTEBOOK_MOCK_DATA", "1")
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    return notebook


@pytest.mark.slow(reason="executes the notebook in a kernel")
def test_left_blank_it_runs_to_the_end_and_every_check_says_not_implemented(
        monkeypatch, tmp_path):
    executed = _execute(nbformat.read(NOTEBOOK, as_version=4), monkeypatch, tmp_path)
    text = _text(executed)
    for name in exercises.names():
        assert f"✗ {name}: {NOT_IMPLEMENTED}" in text
    assert "Write train_step (and the loss it uses) above first" in text
    # No tqdm "IProgress not found" on the learner's screen where the kernel has no
    # ipywidgets (vae_jax.runtime.progress).
    stderr = "".join(output.text for cell in executed.cells if cell.cell_type == "code"
                     for output in cell.outputs if output.get("name") == "stderr")
    assert "IProgress" not in stderr, stderr


@pytest.mark.slow(reason="executes the notebook in a kernel")
def test_with_the_solutions_every_check_passes_and_the_pictures_show(monkeypatch, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for name, cell in _blanks(notebook).items():
        cell.source = exercises.solution(name)
    executed = _execute(notebook, monkeypatch, tmp_path)
    text = _text(executed)
    for name in exercises.names():
        assert f"✓ {name}: passed" in text
    assert "epoch 1: " in text and "K = 100: -log p(x) <= " in text
    pictures = [output for cell in executed.cells if cell.cell_type == "code"
                for output in cell.outputs if "image/png" in output.get("data", {})]
    assert len(pictures) == 2  # the reconstructions, the samples
