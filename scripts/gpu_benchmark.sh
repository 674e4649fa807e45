#!/usr/bin/env bash
# Measure vae-jax on a GPU machine (no internet needed), in one command:
#
#   scripts/gpu_benchmark.sh [--wheels DIR] [--quick] [--out FILE]
#
# Uses the JAX already installed (with CUDA, for a GPU). Whatever else vae-jax needs and is
# missing is installed from the wheel files in DIR (pip download them on a connected
# machine first: `pip download -d wheels .`). Then runs scripts/gpu_benchmark.py, which
# prints one table and writes JSON (gpu_benchmark.json). The PyTorch original is timed when
# torch is installed. --quick runs tiny sizes: it works on a CPU, in about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
wheels=""
forward=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels="$2"; shift 2 ;;
    *) forward+=("$1"); shift ;;
  esac
done
if ! "$PYTHON" -c "import vae_jax.commands.bench" 2>/dev/null; then
  if [ -z "$wheels" ]; then
    echo "gpu_benchmark.sh: error: vae_jax cannot be imported; install it (pip install -e .) or pass --wheels DIR" >&2
    exit 2
  fi
  "$PYTHON" -m pip install --no-index --find-links "$wheels" -e .
fi
"$PYTHON" -c "import jax; print('JAX', jax.__version__, 'on', jax.devices())" >&2
exec "$PYTHON" scripts/gpu_benchmark.py "${forward[@]}"
