"""Ctrl-C is honoured from the first instant to the last (`vae_jax.runtime.interrupts`):
wherever the KeyboardInterrupt lands while a command loads, the command stops with
`PROG: interrupted` and exit code 130. The hazards are simulated, so the test fails on any
machine when the guard breaks; the slow test sends real SIGINTs to `train.py`."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, ctrl_c_reaches_children
from vae_jax.data import arrays

# A command module whose loading is interrupted where jaxlib's loading was: the SIGINT
# arrives while the garbage collector runs a callback (jaxlib registers one), where Python
# would print "Exception ignored in ..." and go on loading, and train to the end.
INTERRUPTED_IN_A_GC_CALLBACK = """
import gc, os, signal, time

def callback(phase, info):
    gc.callbacks.remove(callback)
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, while the collector runs this
    time.sleep(1)                        # Python raises KeyboardInterrupt here

gc.callbacks.append(callback)
gc.collect()
time.sleep(3)  # the rest of the loading

def main():
    print("trained to the end")
    return 0
"""

# ... and where it arrives inside an extension's initialisation, which reports it as an
# ImportError (jaxlib's 45-line traceback).
INTERRUPTED_IN_AN_EXTENSION = """
import os, signal, time
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)
except KeyboardInterrupt:
    raise ImportError("initialization of _jax raised unreported exception") from None

def main():
    return 0
"""

# ... and inside the command's body, where an interrupted lazy import of tensorflow-datasets
# becomes the one-line error that names it.
INTERRUPTED_IN_THE_BODY = """
import argparse, os, signal, time
from vae_jax.commands import cli
from vae_jax.runtime.errors import DatasetError

def body(args):
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    except KeyboardInterrupt:
        raise DatasetError("cannot import tensorflow-datasets, which reads the data") from None

def main():
    return cli.run(cli.OneLineParser(prog="prog"), body)
"""


def _run_command(tmp_path, module_source):
    (tmp_path / "interrupted_command.py").write_text(textwrap.dedent(module_source))
    code = ("import sys\nfrom vae_jax.commands import launch\n"
            "sys.exit(launch.run_command('interrupted_command', 'prog'))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO_ROOT])}
    with ctrl_c_reaches_children():
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=120)


@pytest.mark.parametrize("module_source", [
    INTERRUPTED_IN_A_GC_CALLBACK, INTERRUPTED_IN_AN_EXTENSION, INTERRUPTED_IN_THE_BODY],
    ids=["gc-callback", "extension-import", "lazy-import-in-the-body"])
def test_ctrl_c_is_one_line_and_exit_130_wherever_it_lands(tmp_path, module_source):
    result = _run_command(tmp_path, module_source)
    assert (result.returncode, result.stderr, result.stdout) == (130, "prog: interrupted\n", "")


def test_an_error_without_ctrl_c_is_still_raised(tmp_path):
    result = _run_command(tmp_path, "raise ImportError('a real missing module')\n")
    assert result.returncode == 1 and "ImportError: a real missing module" in result.stderr


@pytest.fixture(scope="module")
def small_arrays(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.npz"
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1), np.uint8)
    arrays.save(str(path), {"train": (images, np.zeros(64)), "test": (images, np.zeros(64))})
    return str(path)


# Marks the moment the interpreter has started (its `site` module, which a Ctrl-C before
# that interrupts in Python's own start-up, out of any program's reach).
STARTED_MARKER = """
import os
open(os.environ["VAE_JAX_TEST_STARTED"], "w").close()
"""


@pytest.mark.slow(reason="starts train.py and interrupts it, again and again")
@pytest.mark.parametrize("delay", [0.2, 0.4, 0.6, 0.8, 1.1, 2.0])
def test_a_real_ctrl_c_soon_after_start_stops_train_py_in_one_line(tmp_path, small_arrays,
                                                                    delay):
    """Delays from the interpreter's start (about 0.1 s after the process's on an idle
    machine): 0.3 to 2.1 s after `python train.py` began."""
    (tmp_path / "sitecustomize.py").write_text(STARTED_MARKER)
    started = tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO_ROOT]),
           "VAE_JAX_TEST_STARTED": str(started)}
    with ctrl_c_reaches_children():
        child = subprocess.Popen(
            [sys.executable, os.path.join(REPO_ROOT, "train.py"), "--dataset", small_arrays,
             "--epochs", "1", "--batch-size", "16", "--no-progress", "--workdir",
             str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env)
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=300)
    assert child.returncode == 130, (out, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: "), err
    assert "epoch   1" not in out, "interrupted, it must not train to the end"
