"""The learners' notebook runs top to bottom, in its quick mode, and draws its figures.

Quick mode (VAE_JAX_NOTEBOOK_QUICK=1) trains on 512 images for one epoch; where MNIST is not
prepared in TFDS_DATA_DIR, the notebook reads tfds's mock MNIST (random images of MNIST's
shape), so the test needs no internet either way.
"""

import os
import pathlib
import re

import pytest

from tests.test_first_screen import NATIVE_ERROR, NOISY_SITECUSTOMIZE
from vae_jax import pretrained

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = pathlib.Path(__file__).parent.parent / "notebooks" / "vae_course_in_jax.ipynb"
FIGURES = 5  # besides one picture of reconstructions per epoch


def _mnist_is_prepared() -> bool:
    data_dir = os.environ.get("TFDS_DATA_DIR")
    return bool(data_dir) and (pathlib.Path(data_dir) / "mnist").is_dir()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def executed(monkeypatch_module, tmp_path_factory):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch_module.setenv("VAE_JAX_NOTEBOOK_QUICK", "1")
    monkeypatch_module.setenv("VAE_JAX_NOTEBOOK_RUNS", str(tmp_path_factory.mktemp("runs")))
    if not _mnist_is_prepared():
        monkeypatch_module.setenv("VAE_JAX_NOTEBOOK_MOCK_DATA", "1")
    # TensorFlow made noisy, as it is on CPUs with AVX-512/AMX (tests/test_first_screen.py):
    # its native log lines must not reach the page, on any machine.
    site = tmp_path_factory.mktemp("noisy_tensorflow")
    (site / "sitecustomize.py").write_text(NOISY_SITECUSTOMIZE)
    monkeypatch_module.setenv("PYTHONPATH", os.pathsep.join(
        [str(site), os.environ.get("PYTHONPATH", "")]))
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, if a cell fails
    return notebook


def _outputs(notebook, kind):
    return [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if kind in output.get("data", {})
            or output.get("output_type") == kind]


def test_committed_notebook_keeps_the_outputs_of_a_full_run():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code), "a cell was never run"
    text = "".join(output.get("text", "") for cell in code for output in cell.outputs)
    assert "Traceback" not in text and not _outputs(notebook, "error")
    # A full run on real MNIST (quick mode trains on 512 images for one epoch):
    assert "20000 train / 2000 test images of mnist" in text
    assert len(_outputs(notebook, "image/png")) == 5 + FIGURES


def test_the_learner_sees_the_model_not_the_test_plumbing():
    """The first code cell is the imports and what the notebook trains on; the quick mode,
    the mock data and the runs' folder are set outside (`vae_jax.data.notebook_mode`)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    assert notebook.cells[0].cell_type == "markdown"
    assert code[0].startswith("# Needs vae-jax") and "Colab" in code[0]
    assert "notebook_mode.settings(train_images=20_000, test_images=2_000, epochs=5)" in code[0]
    for knob in ("VAE_JAX_", "QUICK", "mock_data", "subprocess", "tempfile"):
        assert knob not in "".join(code), knob


@pytest.mark.slow(reason="executes the notebook in a kernel")
def test_notebook_runs_in_quick_mode_and_draws_its_figures(executed):
    text = "".join(output.get("text", "") for cell in executed.cells
                   if cell.cell_type == "code" for output in cell.outputs)
    assert not _outputs(executed, "error")
    # Part 1: the split of the raw output, checked by the notebook itself.
    assert "raw output: (8, 64)" in text
    assert re.search(r"first half == mean: +True", text)
    assert re.search(r"exp\(second half\) == stddev: +True", text)
    # Part 3b: stop_gradient cuts the reconstruction's road to the encoder.
    assert re.search(r"with stop_gradient on z: +0\.00\n", text)
    # Part 3e: the two readings of the second half give the same KL.
    assert "same KL either way: True" in text
    # Part 5: every shipped model listed with its card's numbers (and drawn from).
    for name in pretrained.names():
        assert re.search(rf"^{name} +\((grayscale|binarized)\): negative ELBO \d+\.\d\d, ", text,
                         re.MULTILINE), name
    # The reconstructions of its one epoch, and the figures.
    assert len(_outputs(executed, "image/png")) == 1 + FIGURES


@pytest.mark.slow(reason="executes the notebook in a kernel")
def test_the_notebook_shows_no_native_log_lines(executed):
    """What the kernel's native code writes to its stderr reaches the page (ipykernel
    forwards it): TensorFlow's notices must not, its errors must."""
    stderr = "".join(output.get("text", "") for output in _outputs(executed, "stream")
                     if output.get("name") == "stderr")
    native = [line for line in stderr.splitlines()
              if re.match(r"[IWEF]\d{4} ", line) or "absl::InitializeLog" in line]
    assert native == [NATIVE_ERROR.strip()], stderr[-2000:]
