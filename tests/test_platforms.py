"""vae_jax.runtime.platforms: --platform picks a backend that exists, or says in one line how
to get one.

JAX fails when `jax_platforms` names a platform whose plugin is missing, so on a CUDA machine
naming "cuda,rocm" broke `--platform gpu` (seen on an H100). These tests stand in for JAX's
backends: no real process has to start one."""

import jax
import pytest

from vae_jax.runtime import platforms


@pytest.fixture
def fake_jax(monkeypatch):
    """JAX on a machine with `installed` plugins: naming any other platform fails, as in JAX."""
    state = {"installed": ("cpu", "cuda"), "jax_platforms": None}

    def update(name, value):
        assert name == "jax_platforms"
        state["jax_platforms"] = value

    def default_backend():
        named = state["jax_platforms"]
        for platform in (named.split(",") if named else ()):
            if platform not in state["installed"]:
                raise RuntimeError(f"Unable to initialize backend '{platform}'")
        if named == "cpu" or "cuda" not in state["installed"]:
            return "cpu"
        return "gpu"

    monkeypatch.setattr(jax.config, "update", update)
    monkeypatch.setattr(jax, "default_backend", default_backend)
    return state


def test_gpu_on_a_cuda_machine_without_rocm(fake_jax):
    assert platforms.select_platform("gpu") == "gpu"


def test_gpu_on_a_machine_without_one_is_refused_in_one_line(fake_jax):
    fake_jax["installed"] = ("cpu",)
    with pytest.raises(platforms.PlatformError, match="no usable GPU.*pip install") as error:
        platforms.select_platform("gpu")
    assert "\n" not in str(error.value)


def test_cpu_restricts_jax_to_the_cpu(fake_jax):
    assert platforms.select_platform("cpu") == "cpu"  # on a machine with a GPU too
    assert fake_jax["jax_platforms"] == "cpu"


@pytest.mark.parametrize("installed, backend", [(("cpu", "cuda"), "gpu"), (("cpu",), "cpu")])
def test_auto_leaves_jax_its_own_choice(fake_jax, installed, backend):
    """On a fresh process: the GPU where one is, else the CPU, and no restriction set."""
    fake_jax["installed"] = installed
    assert platforms.select_platform("auto") == backend
    assert fake_jax["jax_platforms"] is None


def test_a_backend_that_fails_to_start_is_one_line(fake_jax):
    fake_jax["jax_platforms"] = "tpu"  # as if JAX_PLATFORMS=tpu on a machine without one
    with pytest.raises(platforms.PlatformError, match="JAX could not start: Unable to"):
        platforms.select_platform("auto")
    with pytest.raises(platforms.PlatformError, match="no usable TPU"):
        platforms.select_platform("tpu")


def test_unknown_platform():
    with pytest.raises(platforms.PlatformError, match="unknown platform"):
        platforms.select_platform("quantum")
