"""The command lines' skeleton (vae_jax.commands.cli): flags derived from the settings, one-line
errors, exit codes, and the installed `vae-jax-*` scripts."""

import argparse
import dataclasses
import importlib
import importlib.metadata
import os
import subprocess
import sys
import warnings

import pytest

from tests.helpers import REPO_ROOT
from vae_jax.commands import cli, launch
from vae_jax.runtime.errors import InputError, Stopped, TrainingInterrupted
from vae_jax.training.config import TrainConfig, flag_name

COMMANDS = {f"vae-jax-{name.replace('_', '-')}": f"vae_jax.commands.{name}"
            for name in ("train", "evaluate", "sample", "plots", "pool_evaluations", "bench",
                         "torch_port", "explore", "export_data", "grade")}


def config_parser() -> cli.OneLineParser:
    parser = cli.OneLineParser(prog="prog")
    cli.add_config_flags(parser, TrainConfig)
    return parser


def test_every_setting_has_a_flag_with_its_default():
    args = config_parser().parse_args([])
    assert cli.config_from_args(args, TrainConfig) == TrainConfig()
    flags = {flag_name(field) for field in dataclasses.fields(TrainConfig)}
    assert {"--epochs", "--batch-size", "--learning-rate", "--z-dim", "--seed", "--dataset",
            "--data-dir", "--no-download", "--train-split", "--test-split", "--binarize",
            "--epoch-mode", "--checkpoint-every", "--keep"} <= flags


def test_flags_set_the_settings():
    args = config_parser().parse_args([
        "--epochs", "3", "--batch-size", "64", "--learning-rate", "1e-3", "--z-dim", "8",
        "--seed", "4", "--data-dir", "/data", "--no-download", "--train-split", "train[:10%]",
        "--binarize", "dynamic", "--epoch-mode", "scan", "--checkpoint-every", "5"])
    assert cli.config_from_args(args, TrainConfig) == TrainConfig(
        epochs=3, batch_size=64, learning_rate=1e-3, z_dim=8, seed=4, data_dir="/data",
        download=False, train_split="train[:10%]", binarize="dynamic", epoch_mode="scan",
        checkpoint_every=5)


@pytest.mark.parametrize("flags, message", [
    (["--keep", "0"], "argument --keep: must be positive, got 0"),
    (["--checkpoint-every", "-2"], "argument --checkpoint-every: must be positive, got -2"),
    (["--learning-rate", "fast"], "argument --learning-rate: 'fast' is not a float"),
    (["--binarize", "static"], "argument --binarize: invalid choice: 'static'"),
    (["--kl-weight", "-1"], "argument --kl-weight: must be a finite number >= 0, got -1"),
    (["--kl-weight", "nan"], "argument --kl-weight: must be a finite number >= 0, got nan"),
    (["--kl-weight", "inf"], "argument --kl-weight: must be a finite number >= 0, got inf"),
    (["--kl-warmup-epochs", "1.5"], "argument --kl-warmup-epochs: '1.5' is not an int"),
    (["--kl-warmup-epochs", "-1"],
     "argument --kl-warmup-epochs: must be a finite number >= 0, got -1"),
])
def test_bad_settings_are_one_line(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        config_parser().parse_args(flags)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"prog: error: {message}" + (
        " (choose from 'none', 'dynamic')" if "choice" in message else "")]


def test_help_shows_each_default_once():
    text = config_parser().format_help()
    assert "(default: 1024)" in text and "(default: at epoch ends only)" in text
    assert "train[:10%]" in text


def run_body(capsys, body, argv=()):
    parser = argparse.ArgumentParser(prog="prog")
    status = cli.run(parser, body, list(argv))
    return status, capsys.readouterr().err.splitlines()


def test_run_turns_known_errors_into_one_line_and_exit_codes(capsys):
    def bad_input(args):
        raise InputError("--workdir x: no such thing\n(more detail that stays unprinted)")

    def interrupted(args):
        raise TrainingInterrupted(15, "stopped by SIGTERM at step 3")

    def stopped(args):
        raise Stopped("stopped early")

    assert run_body(capsys, bad_input) == (2, ["prog: error: --workdir x: no such thing"])
    assert run_body(capsys, interrupted) == (143, ["prog: stopped by SIGTERM at step 3"])
    assert run_body(capsys, stopped) == (1, ["prog: stopped early"])
    assert run_body(capsys, lambda args: None) == (0, [])
    assert run_body(capsys, lambda args: 3) == (3, [])


def test_run_prints_a_warning_in_one_line(capsys):
    """Inside a command a warning reads `PROG: warning: ...` (pytest records warnings
    instead of printing them, so the test asks the formatter directly)."""
    printed = []

    def warns(args):
        printed.append(warnings.formatwarning(
            UserWarning("checkpoint 9 is unreadable\n(details)"), UserWarning, "x.py", 3))

    assert run_body(capsys, warns) == (0, [])
    assert printed == ["prog: warning: checkpoint 9 is unreadable\n"]
    assert "x.py:3: UserWarning" in warnings.formatwarning("elsewhere", UserWarning, "x.py", 3)


def test_run_lets_other_errors_through(capsys):
    def broken(args):
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        run_body(capsys, broken)


def test_program_name_is_the_installed_script_or_the_module(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/venv/bin/vae-jax-evaluate", "--json"])
    assert cli.program_name("python -m vae_jax.commands.evaluate") == "vae-jax-evaluate"
    monkeypatch.setattr("sys.argv", ["/repo/vae_jax/evaluate.py", "--json"])
    prog = "python -m vae_jax.commands.evaluate"
    assert cli.program_name(prog) == prog


@pytest.mark.slow(reason="a subprocess per command")
def test_every_command_runs_as_a_module():
    """`python -m vae_jax.commands.<name> --help` prints the command's usage: each command
    module runs its `main` when executed."""
    children = {module: subprocess.Popen([sys.executable, "-m", module, "--help"],
                                         cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
                for module in COMMANDS.values()}
    for module, child in children.items():
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-2000:]
        assert out.startswith("usage: "), (module, out[:200])


def test_every_command_is_an_installed_script(monkeypatch):
    """Each script runs its command's `main` through `vae_jax.commands.launch`."""
    scripts = {entry.name: entry.value
               for entry in importlib.metadata.entry_points(group="console_scripts")
               if entry.name.startswith("vae-jax-")}
    assert scripts == {name: f"vae_jax.commands.launch:{module.rsplit('.', 1)[1]}"
                       for name, module in COMMANDS.items()}
    for name, module in COMMANDS.items():
        monkeypatch.setattr(f"{module}.main", lambda name=name: f"{name} ran")
        assert getattr(launch, module.rsplit(".", 1)[1])() == f"{name} ran"


INTERRUPTED_IMPORT = """
import builtins
real_import = builtins.__import__
def interrupted_import(name, *args, **kwargs):
    if name == "jax" or name.startswith("jax."):
        raise KeyboardInterrupt  # what Ctrl-C while JAX loads raises, simulated
    return real_import(name, *args, **kwargs)
builtins.__import__ = interrupted_import
"""


@pytest.mark.parametrize("command, prog", [
    ([sys.executable, "train.py", "--epochs", "1"], "train.py"),
    ([sys.executable, "-c", "import sys; from vae_jax.commands import launch; "
                            "sys.argv[0] = '/venv/bin/vae-jax-evaluate'; "
                            "sys.exit(launch.evaluate())"],
     "vae-jax-evaluate"),
])
def test_ctrl_c_while_jax_loads_is_one_line(tmp_path, command, prog):
    (tmp_path / "sitecustomize.py").write_text(INTERRUPTED_IMPORT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO_ROOT])}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert (result.returncode, result.stderr, result.stdout) == (130, f"{prog}: interrupted\n",
                                                                 "")


def test_the_version_is_the_installed_metadata_and_pyprojects():
    import tomllib

    import vae_jax
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as file:
        declared = tomllib.load(file)["project"]["version"]
    assert vae_jax.__version__ == importlib.metadata.version("vae-jax") == declared


@pytest.mark.parametrize("script", [*COMMANDS, "train.py"])
def test_every_command_prints_its_version(script):
    """At once, from the launcher (`vae-jax-* --version`), before JAX is imported."""
    command = ([sys.executable, os.path.join(REPO_ROOT, "train.py")] if script == "train.py"
               else [os.path.join(os.path.dirname(sys.executable), script)])
    result = subprocess.run([*command, "--version"], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{script} {importlib.metadata.version('vae-jax')}\n"


@pytest.mark.parametrize("module", COMMANDS.values())
def test_every_parser_answers_version_too(module, capsys):
    """`python -m vae_jax.commands.NAME --version` and `main(["--version"])` reach the
    parser, whose --help lists the flag."""
    command = importlib.import_module(module)
    with pytest.raises(SystemExit) as exit_:
        command.main(["--version"])
    assert exit_.value.code == 0
    prog = command.build_parser().prog
    assert capsys.readouterr().out == f"{prog} {importlib.metadata.version('vae-jax')}\n"
