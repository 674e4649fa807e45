"""Shared fixtures (a small batch of images, the model and its variables, built once) and
the suite's two tiers.

Tiers: `python -m pytest -q` runs the fast tier, the tests a change most often breaks;
the tests marked `@pytest.mark.slow(reason=...)` (subprocesses with signals and SIGKILL,
fault injection, many devices and processes, the notebook, real MNIST, the GPU benchmark
script) are left out, and the summary says so. `python -m pytest -q --slow` runs both
tiers, `-m slow` the slow one alone.

Every process the suite starts shares one persistent XLA compilation cache (the environment
is inherited): the tests' many training subprocesses compile the same few programs, and
compiling is most of what such a short run costs on a CPU. The cache outlives the run
(`tests/compilation_cache.py`: a folder per jax version and CPU, so a run on another
kind of machine never loads code compiled for this one), so the next run, and the slow tier
after the fast one, compile little. `VAE_JAX_TEST_CACHE=session` keeps it to this run.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    from tests import compilation_cache
    os.environ.update(compilation_cache.environment())

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="run every tier: the fast default and the tests marked slow")


def pytest_collection_modifyitems(config, items):
    """Leaves the slow tier out unless --slow (or a -m expression) asks for it."""
    if config.getoption("--slow") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_terminal_summary(terminalreporter, config):
    if not (config.getoption("--slow") or config.getoption("markexpr")):
        terminalreporter.write_line("fast tier: the tests marked slow were left out; "
                                    "`python -m pytest -q --slow` runs every tier")


@pytest.fixture(scope="session")
def images():
    """Eight 28x28x1 images in [0, 1] with digit-like structure (a blurred random blob)."""
    rng = np.random.default_rng(0)
    base = rng.uniform(size=(8, 28, 28, 1)).astype(np.float32)
    return np.clip(base * np.linspace(0, 1.5, 28)[None, :, None, None], 0, 1).astype(np.float32)


@pytest.fixture(scope="session")
def model():
    from vae_jax import VAE
    return VAE()


@pytest.fixture(scope="session")
def variables(model, images):
    return model.init(jax.random.key(0), images, jax.random.key(1), train=False)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """A finished three-epoch run (tests.helpers.run_in_process); copy it before changing it.

    Its training step may compile once (`chex.assert_max_traces`: every batch of 48 images
    in 16s has one shape), so each session that uses the run also checks a whole run's
    compile count, in the fast tier."""
    import chex

    from tests.helpers import run_in_process
    from vae_jax.training import loop, steps
    workdir = tmp_path_factory.mktemp("uninterrupted")
    chex.clear_trace_counter()  # counted per place in the code, over the whole session
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "make_train_step",
                      lambda **options: steps.make_train_step(max_traces=1, **options))
        assert run_in_process(workdir) == 0
    return workdir
