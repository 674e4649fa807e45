"""The first screen is ours: no native log lines from TensorFlow (or anything it loads)
before or between the project's own lines, whatever the CPU prints.

TensorFlow prints such lines only on some CPUs (AVX-512/AMX Xeons) and versions, so the
tests do not wait for the machine to print them: they simulate a noisy native import, a
`sitecustomize` that makes `import tensorflow` and every read of a dataset write glog-style
lines to file descriptor 2, as TensorFlow 2.21 does on such CPUs. With the guard broken,
these tests fail on every machine.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow_datasets as tfds

from tests.helpers import REPO_ROOT
from vae_jax.runtime import native_output

NOISE = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
         "STDERR\nI0000 00:00:1796518872.205260    2537 port.cc:153] oneDNN custom operations "
         "are on.\nI0000 00:00:1796518872.270469    2537 cpu_feature_guard.cc:227] This "
         "TensorFlow binary is optimized to use available CPU instructions\n")
READ_NOISE = ("W0000 00:00:1796518872.5 2537 cache_dataset_ops.cc:916] The calling iterator "
              "did not fully read the dataset being cached.\n")
NATIVE_ERROR = "E0000 00:00:1796518872.6 2537 simulated.cc:1] a real native error\n"

NOISY_SITECUSTOMIZE = textwrap.dedent(f"""
    import importlib.abc, os, sys

    NOISE, READ_NOISE, NATIVE_ERROR = {NOISE!r}, {READ_NOISE!r}, {NATIVE_ERROR!r}

    def after_import(module):
        # What TensorFlow writes on a noisy CPU when it loads, and a line for every read.
        if module.__name__ == "tensorflow":
            os.write(2, (NOISE + NATIVE_ERROR).encode())
        else:
            as_numpy = module.as_numpy
            def noisy_as_numpy(*args, **kwargs):
                os.write(2, READ_NOISE.encode())
                return as_numpy(*args, **kwargs)
            module.as_numpy = noisy_as_numpy

    class NoisyLoader(importlib.abc.Loader):
        def __init__(self, loader):
            self.loader = loader
        def __getattr__(self, name):  # resource readers and the rest: the real loader's
            return getattr(self.loader, name)
        def create_module(self, spec):
            return self.loader.create_module(spec)
        def exec_module(self, module):
            self.loader.exec_module(module)
            after_import(module)

    class NoisyTensorFlow(importlib.abc.MetaPathFinder):
        # The real modules, loaded by a loader that makes them noisy once imported (a
        # mere `importlib.util.find_spec`, as etils does, imports nothing).
        def find_spec(self, name, path, target=None):
            if name not in ("tensorflow", "tensorflow_datasets"):
                return None
            for finder in sys.meta_path:
                if finder is not self and hasattr(finder, "find_spec"):
                    spec = finder.find_spec(name, path, target)
                    if spec is not None:
                        spec.loader = NoisyLoader(spec.loader)
                        return spec
            return None

    sys.meta_path.insert(0, NoisyTensorFlow())
""")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """tfds' offline `dummy_mnist` (20 train, 20 test images), really prepared."""
    directory = tmp_path_factory.mktemp("tfds")
    tfds.testing.DummyMnist(data_dir=str(directory)).download_and_prepare()
    return directory


def environment(site_dir):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site_dir), REPO_ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the user's environment need not set it
    return env


def run_train(site_dir, data_dir, workdir, *extra):
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "train.py"), "--dataset", "dummy_mnist",
         "--data-dir", str(data_dir), "--no-download", "--batch-size", "10", "--epochs", "1",
         "--no-progress", "--workdir", str(workdir), *extra],
        capture_output=True, text=True, env=environment(site_dir), timeout=600)


@pytest.mark.slow(reason="a training subprocess")
def test_train_py_shows_only_its_own_lines_under_a_noisy_tensorflow(tmp_path, data_dir):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NOISY_SITECUSTOMIZE)
    # The stand-in works: without the guard, a plain import prints the noise.
    plain = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                           text=True, env=environment(tmp_path / "site"), timeout=600)
    assert "oneDNN custom operations" in plain.stderr

    result = run_train(tmp_path / "site", data_dir, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout.splitlines()
    assert out[0].startswith(f"training in {tmp_path / 'run'} on cpu, 1 device"), out
    assert out[1].startswith("epoch   1  train loss"), out
    assert out[-1].startswith("next: vae-jax-evaluate --workdir "), out
    # The native error line is kept (once per import), nothing else reaches stderr.
    assert result.stderr.splitlines() == [NATIVE_ERROR.strip()]


def test_a_tensorflow_that_cannot_import_says_why_in_one_line(tmp_path, data_dir):
    broken = tmp_path / "site" / "tensorflow"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        "import os\nos.write(2, b'I0000 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "raise ImportError('libtensorflow_framework.so.2: cannot open shared object file')\n")
    result = run_train(tmp_path / "site", data_dir, tmp_path / "run")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "train.py: error: cannot import tensorflow-datasets, which reads the data: "
        "ImportError: libtensorflow_framework.so.2: cannot open shared object file"]


def test_filtered_drops_native_noise_keeps_errors_and_python_lines(capfd):
    with native_output.filtered():
        os.write(2, (NOISE + NATIVE_ERROR + READ_NOISE).encode())
        print("ours, through sys.stderr", file=sys.stderr)
        with native_output.filtered():  # nested: the inner error line reaches the screen
            os.write(2, (NOISE + "F0000 00:00:1.0 1 inner.cc:2] fatal\n").encode())
    os.write(2, b"after\n")
    assert capfd.readouterr().err.splitlines() == [
        "ours, through sys.stderr", "F0000 00:00:1.0 1 inner.cc:2] fatal",
        NATIVE_ERROR.strip(), "after"]


def test_filtered_restores_descriptor_2_when_its_body_raises(capfd):
    with pytest.raises(ImportError, match="no such module"):
        with native_output.filtered():
            os.write(2, NOISE.encode())
            raise ImportError("no such module")
    os.write(2, b"visible\n")
    assert capfd.readouterr().err == "visible\n"


@pytest.mark.parametrize("line, error", [
    ("E1206 01:00:00.000000  123 file.cc:45] failed", True),
    ("F0000 00:00:1.0 1 x.cc:1] check failed", True),
    ("2026-12-06 01:00:00.0: E external/xla/service.cc] Error: out of memory", True),
    ("Traceback (most recent call last):", True),
    ("I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.", False),
    ("W0000 00:00:1.0 1 local_rendezvous.cc:407] Local rendezvous is aborting with status: "
     "DATA_LOSS", False),
    ("WARNING: All log messages before absl::InitializeLog() is called are written to "
     "STDERR", False),
    ("To enable the following instructions: AVX2 AVX512F, in other operations, rebuild "
     "TensorFlow with the appropriate compiler flags.", False),
])
def test_error_lines_are_told_from_notices(line, error):
    assert native_output.is_error_line(line) is error


def test_a_logging_handler_made_during_the_capture_keeps_working_after_it():
    """TensorFlow makes its logger's handler on `sys.stderr` while it loads, that is, on
    the stand-in stream: that stream must still reach the screen afterwards."""
    child = ("import logging, os, sys\nfrom vae_jax.runtime import native_output\n"
             "with native_output.filtered():\n"
             "    os.write(2, b'I0000 00:00:1.0 1 port.cc:153] oneDNN notice\\n')\n"
             "    logging.getLogger('made_inside').addHandler(logging.StreamHandler(sys.stderr))\n"
             "logging.getLogger('made_inside').warning('a warning after the capture')\n"
             "print('ours', file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", child], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, "a warning after the capture\nours\n")
