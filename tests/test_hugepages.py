"""Huge pages for XLA's buffers: when the commands re-execute themselves, and that they do."""

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT
from vae_jax.commands import cli
from vae_jax.runtime import hugepages


@pytest.fixture
def helpful(monkeypatch):
    """A machine where the tunable helps: Linux, glibc 2.36, THP in madvise mode."""
    monkeypatch.setattr(hugepages.sys, "platform", "linux")
    monkeypatch.setattr(hugepages, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(hugepages, "thp_mode", lambda path=None: "madvise")


def test_the_tunable_is_added_to_the_users_others(helpful):
    assert hugepages.tunables_with_huge_pages({}) == "glibc.malloc.hugetlb=1"
    assert (hugepages.tunables_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
            == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


@pytest.mark.parametrize("value", ["glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=1",
                                   "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0"])
def test_a_users_own_setting_is_kept(helpful, value):
    assert hugepages.tunables_with_huge_pages({"GLIBC_TUNABLES": value}) is None


@pytest.mark.parametrize("setting,value", [("glibc_version", (2, 34)), ("glibc_version", None),
                                           ("thp_mode", "always"), ("thp_mode", "never"),
                                           ("thp_mode", None)])
def test_nothing_where_it_cannot_help(helpful, monkeypatch, setting, value):
    monkeypatch.setattr(hugepages, setting, lambda *args: value)
    assert hugepages.tunables_with_huge_pages({}) is None


def test_not_linux(helpful, monkeypatch):
    monkeypatch.setattr(hugepages.sys, "platform", "darwin")
    assert hugepages.tunables_with_huge_pages({}) is None


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    mode_file = tmp_path / "enabled"
    mode_file.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(str(mode_file)) == "madvise"
    assert hugepages.thp_mode(str(tmp_path / "missing")) is None


def test_relaunch_re_executes_the_same_command_once_in_the_same_process():
    env = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    if hugepages.tunables_with_huge_pages(env) is None:
        pytest.skip("huge pages cannot help on this machine (see vae_jax.runtime.hugepages)")
    code = ("import os, sys\nfrom vae_jax.runtime import hugepages\n"
            "print('started', os.getpid(), file=sys.stderr)\n"
            "hugepages.relaunch_with_huge_pages()\n"
            "print(os.getpid(), os.environ['GLIBC_TUNABLES'], hugepages.enabled(), "
            "'jax' in sys.modules, sys.argv[1:])\n")
    result = subprocess.run([sys.executable, "-c", code, "--flag", "x"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    starts = result.stderr.split()
    assert starts[0::2] == ["started", "started"] and starts[1] == starts[3]
    pid, tunables, enabled, jax_loaded, argv = result.stdout.split(maxsplit=4)
    assert pid == starts[1]
    assert tunables == "glibc.malloc.hugetlb=1" and enabled == "True"
    assert jax_loaded == "False"  # vae_jax.runtime.hugepages does not pull in JAX
    assert argv.strip() == "['--flag', 'x']"


@pytest.mark.parametrize("with_platform,argv,relaunched", [
    (True, None, True),          # a command line of a command that computes with JAX
    (True, ["--x", "1"], False),  # a call from Python code
    (False, None, False),        # a command line of a command that does not compute
])
def test_commands_relaunch_only_from_their_command_line_and_only_if_they_compute(
        monkeypatch, with_platform, argv, relaunched):
    calls = []
    monkeypatch.setattr(hugepages, "relaunch_with_huge_pages", lambda: calls.append(1))
    monkeypatch.setattr(sys, "argv", ["prog", "--x", "1"])
    parser = cli.OneLineParser(prog="prog")
    parser.add_argument("--x")
    if with_platform:
        cli.add_platform_flag(parser)
    assert cli.run(parser, lambda args: 0, argv) == 0
    assert calls == ([1] if relaunched else [])
