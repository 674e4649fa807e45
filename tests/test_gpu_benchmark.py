"""scripts/gpu_benchmark.sh: every row runs (here on the CPU, --quick), one table, JSON."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT


@pytest.mark.slow(reason="every benchmark row, in a subprocess")
def test_quick_run_on_the_cpu_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [os.path.join(REPO_ROOT, "scripts", "gpu_benchmark.sh"), "--quick", "--no-torch",
         "--platform", "cpu", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHON": sys.executable})  # this interpreter, not PATH's
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert not [row for row in rows if "error" in row]
    assert [(row["mode"], row["resolved_implementation"]) for row in rows] == [
        ("step", "xla"), ("epoch", "xla"), ("iwae", "xla"),
        ("step", "matmul"), ("epoch", "matmul"), ("iwae", "matmul"),
        ("step", "winograd"), ("epoch", "winograd"), ("iwae", "winograd")]
    assert rows[0]["matmul_gflops"] > 0 and all("matmul_gflops" not in row for row in rows[1:])
    assert rows[1]["num_images"] == 64
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["mode", "impl", "batch", "ms/call"]
    assert len([line for line in lines if line.startswith(("step ", "epoch ", "iwae "))]) == 9
    assert lines[-2].startswith("float32 matmul floor:")
