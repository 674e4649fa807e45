"""The benchmark's command line: JSON fields, and one-line errors with exit code 2."""

import json
import sys

import pytest

from vae_jax import bench


def run_bench(capsys, *args):
    """`python -m vae_jax.bench ARGS` in this process: (exit code, stdout, stderr)."""
    status = bench.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_json_report_has_the_fields(capsys):
    status, out, err = run_bench(capsys, "--batch-size", "8", "--steps", "2", "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["backend"] == "cpu"
    assert report["batch_size"] == 8
    assert report["implementation"] == "auto"
    assert report["resolved_implementation"] == "matmul"
    assert report["timed_steps"] == 2
    for field in ("images_per_sec", "ms_per_step", "ms_per_step_min", "compile_seconds",
                  "peak_memory_bytes"):
        assert isinstance(report[field], (int, float)) and report[field] > 0, field
    assert report["images_per_sec"] == pytest.approx(8e3 / report["ms_per_step"], rel=0.01)
    assert report["peak_memory_kind"] == "host_peak_rss"
    assert not any(key.startswith("torch") for key in report)


def test_default_output_is_a_summary_line(capsys):
    status, out, err = run_bench(capsys, "--batch-size", "4", "--steps", "1", "--warmup", "0",
                                 "--implementation", "xla")
    assert status == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    assert "implementation xla (xla)" in lines[0] and "ms/step" in lines[0]


@pytest.mark.parametrize("flags", [["--bogus"], ["--batch-size", "0"], ["--steps", "x"],
                                   ["--implementation", "fast"], ["--platform", "quantum"]])
def test_bad_flag_is_one_line_and_exit_code_2(capsys, flags):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(flags)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "error" in captured.err


def test_vs_torch_without_torch_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    status, out, err = run_bench(capsys, "--vs-torch")
    assert status == 2
    assert err.strip().splitlines() == [
        "python -m vae_jax.bench: error: --vs-torch needs PyTorch: pip install torch==2.13.0"]


def test_vs_torch_reports_the_ratio(capsys):
    pytest.importorskip("torch")
    status, out, err = run_bench(capsys, "--batch-size", "8", "--steps", "2", "--warmup", "1",
                                 "--json", "--vs-torch")
    assert status == 0, err
    report = json.loads(out)
    assert report["torch_threads"] == report["threads"]
    assert report["torch_ms_per_step"] > 0
    assert report["speedup_vs_torch"] == pytest.approx(
        report["torch_ms_per_step"] / report["ms_per_step"], rel=0.01)
