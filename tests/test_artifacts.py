"""The release artifacts' checker (scripts/check_artifacts.py, which .ci/run runs on the
built sdist and wheel): it refuses a wheel without its pretrained models, with anything
but the package in it, or an sdist that lacks the tests or holds build outputs; and the
wheel built from this checkout passes it."""

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT, load_repository_module
from vae_jax import pretrained

check_artifacts = load_repository_module("scripts", "check_artifacts.py")

MODELS = pretrained.names()


def _complete_wheel() -> list[str]:
    names = ["vae_jax/__init__.py", "vae_jax/model/vae.py",
             "vae_jax-0.1.0.dist-info/METADATA", "vae_jax-0.1.0.dist-info/licenses/LICENSE"]
    for model in MODELS:
        folder = f"vae_jax/pretrained/{model}/"
        names += [folder + "config.json", folder + "model_card.json",
                  folder + "variables/digests.json"]
    return names


def test_a_complete_wheel_passes():
    assert check_artifacts.wheel_problems(_complete_wheel(), MODELS) == []


def test_a_wheel_without_its_pretrained_models_fails():
    names = [name for name in _complete_wheel() if "/pretrained/" not in name]
    problems = check_artifacts.wheel_problems(names, MODELS)
    assert f"the wheel lacks the pretrained model {MODELS[0]}'s variables" in problems
    assert len(problems) == 3 * len(MODELS)


def test_a_wheel_with_the_tests_or_without_its_license_fails():
    names = [name for name in _complete_wheel() if "LICENSE" not in name] + ["tests/x.py"]
    assert check_artifacts.wheel_problems(names, MODELS) == [
        "the wheel holds tests/x.py, which is neither the package nor its metadata",
        "the wheel lacks the license file"]


def test_an_sdist_without_tests_or_with_build_outputs_fails():
    names = [*check_artifacts.SDIST_NEEDS, "docs/_build/html/index.html",
             "vae_jax/__pycache__/x.cpython-311.pyc"]
    names.remove("tests/conftest.py")
    assert check_artifacts.sdist_problems(names) == [
        "the sdist lacks tests/conftest.py",
        "the sdist holds docs/_build/html/index.html, a build output or a run",
        "the sdist holds vae_jax/__pycache__/x.cpython-311.pyc, a build output or a run"]


def test_the_models_shipped_are_read_from_the_sdist():
    names = [f"vae_jax/pretrained/{model}/model_card.json" for model in MODELS]
    assert check_artifacts.shipped_models(names + ["vae_jax/pretrained/fingerprint.py"]) \
        == MODELS


@pytest.mark.slow(reason="builds the sdist and the wheel (setuptools in an isolated env)")
def test_the_artifacts_built_from_this_checkout_pass(tmp_path):
    """Built from the files a clone has (a stale egg-info from an editable install would
    hide a model missing from the package data)."""
    source = tmp_path / "source"
    assert check_artifacts.clean_copy(REPO_ROOT, str(source)) > 100
    assert not (source / "vae_jax.egg-info").exists() and (source / "pyproject.toml").exists()
    build = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path),
                            str(source)], capture_output=True, text=True, timeout=600)
    if "No module named build" in build.stderr:
        pytest.skip("the `build` package is not installed (.ci/run installs it)")
    assert build.returncode == 0, build.stderr[-3000:]
    warnings = [line for line in (build.stdout + build.stderr).splitlines()
                if "warning" in line.lower() and "byte-compiling is disabled" not in line]
    assert warnings == []
    wheel, = [name for name in os.listdir(tmp_path) if name.endswith(".whl")]
    sdist, = [name for name in os.listdir(tmp_path) if name.endswith(".tar.gz")]
    assert check_artifacts.check_contents(str(tmp_path / wheel), str(tmp_path / sdist)) == []
