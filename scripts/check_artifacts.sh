#!/usr/bin/env bash
# A release's artifacts, checked as a user receives them: builds the sdist and the wheel
# (no warning allowed), checks their metadata (twine check --strict) and contents, installs
# the wheel into a fresh virtual environment and runs the smoke set there from a folder
# outside the repository (scripts/check_artifacts.py). Uses $TFDS_DATA_DIR's prepared MNIST
# where it is set, else tfds's mock data.
#
#   bash scripts/check_artifacts.sh          # needs `pip install build twine`
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# From the files a clone has: an editable install's stale vae_jax.egg-info would add its
# old file list to the build.
python "$repo/scripts/check_artifacts.py" copy "$repo" "$work/src"
if ! python -m build --outdir "$work/dist" "$work/src" > "$work/build.log" 2>&1; then
  cat "$work/build.log"; exit 1
fi
# PYTHONDONTWRITEBYTECODE, where the machine sets it, makes setuptools say it skips
# byte-compiling: the machine's setting, not the project's.
if grep -i "warning" "$work/build.log" | grep -v "byte-compiling is disabled"; then
  echo "check_artifacts: the build warned (above)"; exit 1
fi
grep "Successfully built" "$work/build.log"
python -m twine check --strict "$work"/dist/*
python "$repo/scripts/check_artifacts.py" contents "$work"/dist/*.whl "$work"/dist/*.tar.gz

python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/*.whl
mkdir "$work/outside"
cd "$work/outside"
"$work/venv/bin/python" "$repo/scripts/check_artifacts.py" smoke \
  ${TFDS_DATA_DIR:+--data-dir "$TFDS_DATA_DIR"}
