#!/usr/bin/env bash
# Checks that pyproject.toml's lower bounds are true: installs vae-jax with the lowest
# versions its bounds allow for every direct dependency (uv's --resolution lowest-direct),
# prints them, and runs a smoke set against them: the model, loss, checkpoint, command-line,
# end-to-end training and explorer tests (its page in Chromium too), and a tiny
# `python train.py` run on tfds' offline dummy dataset. Needs the package index (PyPI), not
# MNIST.
#
#   scripts/check_dependency_versions.sh [--python 3.11] [--venv DIR] [--highest]
#
# --highest resolves the newest versions instead (what pip picks today), with the same
# checks; --python picks the interpreter (a pyenv version, or pythonX.Y on the PATH).
# Exit code 0 when everything passed.
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=3.11
venv=.versions-venv
resolution=lowest-direct
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python_version="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    --highest) resolution=highest; shift ;;
    *) echo "check_dependency_versions.sh: error: unknown argument $1" >&2; exit 2 ;;
  esac
done
python3 -m pip install --quiet uv
python_path=""
if command -v pyenv >/dev/null; then  # pyenv's shims answer only for the active version
  found=$(pyenv versions --bare | grep -E "^${python_version//./\.}(\.|$)" | tail -1 || true)
  [ -n "$found" ] && python_path=$(pyenv root)/versions/$found/bin/python
fi
if [ -z "$python_path" ]; then
  python_path=$(command -v "python$python_version" || true)
fi
if [ -z "$python_path" ]; then
  echo "check_dependency_versions.sh: error: no Python $python_version found" >&2
  exit 2
fi
rm -rf "$venv"
python3 -m uv venv --quiet --python "$python_path" "$venv"
python3 -m uv pip install --quiet --python "$venv/bin/python" --resolution "$resolution" \
  -e '.[test]'
echo "resolved ($resolution, $("$venv/bin/python" --version)):"
python3 -m uv pip list --python "$venv/bin/python" 2>/dev/null \
  | grep -iE '^(jax|jaxlib|flax|optax|chex|orbax-checkpoint|tensorflow|tensorflow-cpu|tensorflow-datasets|numpy|tqdm|tensorboardx|matplotlib|pillow|protobuf|gradio|playwright) '

"$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_models.py tests/test_losses.py tests/test_checkpoints.py tests/test_cli.py \
  tests/test_train.py tests/test_first_screen.py tests/test_nnx.py tests/test_explore.py \
  tests/test_objectives.py tests/test_pretrained.py tests/test_schedules.py \
  tests/test_arrays.py tests/test_exercises.py
"$venv/bin/python" -m pytest -q -p no:cacheprovider -m slow tests/test_explore_page.py

data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
"$venv/bin/python" -c "import sys, tensorflow_datasets as tfds
tfds.testing.DummyMnist(data_dir=sys.argv[1]).download_and_prepare()" "$data/tfds" >/dev/null 2>&1
"$venv/bin/python" train.py --dataset dummy_mnist --data-dir "$data/tfds" --no-download \
  --batch-size 8 --epochs 2 --no-progress --workdir "$data/run"
test -f "$data/run/samples_epoch2.png"
echo "check_dependency_versions.sh: the smoke set passed with the $resolution versions"
