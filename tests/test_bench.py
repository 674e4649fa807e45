"""The benchmark's command line: JSON fields, and one-line errors with exit code 2."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT



def run_bench(*args, code=None):
    command = [sys.executable, "-m", "vae_jax.bench", *args] if code is None else [
        sys.executable, "-c", code, *args]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_json_report_has_the_fields():
    result = run_bench("--batch-size", "8", "--steps", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
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


def test_default_output_is_a_summary_line():
    result = run_bench("--batch-size", "4", "--steps", "1", "--warmup", "0",
                       "--implementation", "xla")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "implementation xla (xla)" in lines[0] and "ms/step" in lines[0]


@pytest.mark.parametrize("flags", [["--bogus"], ["--batch-size", "0"], ["--steps", "x"],
                                   ["--implementation", "fast"], ["--platform", "quantum"]])
def test_bad_flag_is_one_line_and_exit_code_2(flags):
    result = run_bench(*flags)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "error" in result.stderr


def test_vs_torch_without_torch_says_how_to_install_it():
    code = ("import sys; sys.modules['torch'] = None; from vae_jax.bench import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = run_bench("--vs-torch", code=code)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "python -m vae_jax.bench: error: --vs-torch needs PyTorch: pip install torch==2.13.0"]


def test_vs_torch_reports_the_ratio():
    pytest.importorskip("torch")
    result = run_bench("--batch-size", "8", "--steps", "2", "--warmup", "1", "--json",
                       "--vs-torch")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["torch_threads"] == report["threads"]
    assert report["torch_ms_per_step"] > 0
    assert report["speedup_vs_torch"] == pytest.approx(
        report["torch_ms_per_step"] / report["ms_per_step"], rel=0.01)
