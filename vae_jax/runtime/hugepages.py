"""Transparent huge pages for the commands' large buffers (Linux, glibc 2.35 or later).

XLA:CPU allocates each execution's temporary buffer with malloc (about 420 MB for the
training step at batch 1024) and frees it afterwards; glibc serves blocks that large with a
fresh `mmap`, so every step faults about 100,000 zeroed 4 KiB pages back in, a quarter of
the step on a 2-core machine. glibc's tunable `glibc.malloc.hugetlb=1` asks the kernel for
2 MiB pages on those mappings (`madvise(MADV_HUGEPAGE)`): 500 faults a step instead, the
same peak memory. Measured in docs/guides/performance.md.

Tunables are read when a process starts, so the commands that compute with JAX (those with
`--platform`: `train.py`, `vae_jax.evaluation`, `vae_jax.benchmarks.suite`, `sample`, `plots`)
re-execute themselves once with it set, before any work and with the same arguments and
process id. Nothing happens where it cannot help: not Linux, not glibc
2.35+, transparent huge pages not in `madvise` mode (`always` gives them anyway, `never`
refuses them), or GLIBC_TUNABLES already naming `glibc.malloc.hugetlb` (set it to 0 to opt
out). Library code (a notebook, `import vae_jax`) is never re-executed; set the variable
before starting Python to get the same there.

This module imports only the standard library, so `train.py` can use it before JAX loads.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise", "never"), or None."""
    try:
        with open(path) as file:
            text = file.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> tuple[int, ...] | None:
    """(major, minor) of the C library when it is glibc, else None."""
    library, version = platform.libc_ver()
    if library != "glibc" or not version:
        return None
    try:
        return tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None


def tunables_with_huge_pages(environ: dict[str, str]) -> str | None:
    """The GLIBC_TUNABLES value that turns huge pages on, or None when it would not help.

    None where the variable already sets `glibc.malloc.hugetlb` (whatever its value: the
    user's choice), or where the C library or the kernel cannot honour it.
    """
    current = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in current or not sys.platform.startswith("linux"):
        return None
    version = glibc_version()
    if version is None or version < MIN_GLIBC or thp_mode() != "madvise":
        return None
    return f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"


def enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether this process's large allocations get huge pages (for the benchmark's report)."""
    environ = os.environ if environ is None else environ
    if thp_mode() == "always":
        return True
    return f"{TUNABLE}=1" in environ.get("GLIBC_TUNABLES", "").split(":")


def relaunch_with_huge_pages() -> None:
    """Re-executes this command with `glibc.malloc.hugetlb=1` when that would help.

    Call it first thing in a command's entry point; returns (doing nothing) where it would
    not help, and never returns otherwise. The new process runs `sys.orig_argv` again, so
    `python train.py ...`, `python -m vae_jax.commands.bench ...` and the console scripts all work.
    """
    tunables = tunables_with_huge_pages(dict(os.environ))
    argv = getattr(sys, "orig_argv", None)
    if tunables is None or not argv or not sys.executable:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.environ["GLIBC_TUNABLES"] = tunables
    os.execv(sys.executable, argv)
