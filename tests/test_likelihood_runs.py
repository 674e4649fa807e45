"""scripts/likelihood_runs.py: recipes trained in pieces under a budget, a run stopped by
the budget resumed by the next call, finished runs evaluated once, one table."""

import json

import numpy as np
import pytest

from tests.helpers import load_repository_module
from vae_jax.data import arrays


def load_script():
    return load_repository_module("scripts", "likelihood_runs.py")


def table_rows(output: str) -> dict[str, list[str]]:
    return {cells[0]: cells for cells in
            ([cell.strip() for cell in line.strip("|").split("|")]
             for line in output.splitlines() if line.startswith("| ") and "recipe" not in line)}


def test_every_recipe_plans_100_binarized_epochs_and_quick_overrides_them():
    script = load_script()
    for name, flags in script.RECIPES.items():
        assert script.planned_epochs(flags) == 100, name
        assert flags[flags.index("--binarize") + 1] == "dynamic", name
        assert script.planned_epochs([*flags, *script.QUICK["train"]]) == 2


@pytest.mark.slow(reason="training and evaluation subprocesses")
def test_a_run_stopped_by_the_budget_is_finished_and_evaluated_by_the_next_call(
        tmp_path, capfd):
    rng = np.random.default_rng(0)
    data = str(tmp_path / "data.npz")
    arrays.save(data, {split: (rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8),
                               rng.integers(0, 10, count))
                       for split, count in (("train", 32), ("test", 16))})
    script = load_script()
    flags = ["--dataset", data, "--runs-dir", str(tmp_path / "runs"), "--only",
             "dreg5_cosine", "--quick"]
    workdir = tmp_path / "runs" / "dreg5_cosine"

    assert script.main([*flags, "--budget-minutes", "0.02"]) == 0  # stopped at once
    row = table_rows(capfd.readouterr().out)["dreg5_cosine"]
    assert row[1] in ("0/2", "1/2") and row[2] == "", row
    assert not list(workdir.glob("evaluation_*.json"))

    assert script.main([*flags, "--budget-minutes", "10"]) == 0
    row = table_rows(capfd.readouterr().out)["dreg5_cosine"]
    assert row[1] == "2/2" and row[-2].isdigit(), row
    assert [record["epoch"] for record in script.read_metrics(str(workdir))] == [1, 2]
    evaluation = json.loads((workdir / "evaluation_k5.json").read_text())
    assert evaluation["iwae_samples"] == 5 and evaluation["num_images"] == 8
    assert row[4] == f"{evaluation['nll_iwae']:.2f} ± {evaluation['nll_iwae_stderr']:.2f}"

    saved = {path: path.stat().st_mtime_ns for path in workdir.glob("evaluation_*.json")}
    assert script.main([*flags, "--budget-minutes", "10"]) == 0  # nothing left to do
    assert "$ " not in capfd.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in saved} == saved


def test_a_half_written_last_metrics_line_does_not_stop_the_workflow(tmp_path):
    """A run killed while appending leaves half a line; the resumed run redoes that epoch,
    so the script reads the complete records and goes on."""
    script = load_script()
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "test_loss": 99.5}\n{"epoch": 2, "te')
    assert script.read_metrics(str(tmp_path)) == [{"epoch": 1, "test_loss": 99.5}]
    assert script.read_metrics(str(tmp_path / "no_run_yet")) == []


def test_relative_paths_are_the_callers_and_a_budget_must_be_positive(tmp_path, monkeypatch,
                                                                     capsys):
    """The runs work in the repository: paths relative to where the script was called from
    are made absolute first; a budget of NaN or below 0 is refused, not a run that trains
    nothing and exits 0."""
    script = load_script()
    monkeypatch.chdir(tmp_path)
    args = script.parse_args(["--dataset", "data/mnist.npz", "--runs-dir", "runs",
                              "--data-dir", "tfds"])
    assert (args.dataset, args.runs_dir, args.data_dir) == (
        str(tmp_path / "data" / "mnist.npz"), str(tmp_path / "runs"), str(tmp_path / "tfds"))
    assert script.parse_args(["--dataset", "mnist", "--runs-dir", "r"]).dataset == "mnist"
    for budget in ("nan", "-5", "0", "inf"):
        with pytest.raises(SystemExit):
            script.parse_args(["--dataset", "mnist", "--runs-dir", "r",
                               "--budget-minutes", budget])
        assert "must be a positive number of minutes" in capsys.readouterr().err
