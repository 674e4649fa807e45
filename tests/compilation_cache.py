"""The test suite's XLA compilation cache, kept between runs.

A run compiles into a folder of its own (JAX's persistent cache, shared with every worker
and subprocess through the environment) that starts as a copy of the store: the
executables earlier runs compiled on this kind of machine. When the run ends, what it
compiled joins the store, one file at a time and atomically, and only entries that
decompress whole: a subprocess killed while JAX wrote an entry leaves a truncated file,
which must not outlive its run (JAX would warn on every later read of it).

The store is a folder per jax and jaxlib version, Python, and CPU (model and instruction
set flags): XLA compiles for the CPU it runs on, so code from another kind of machine is
never loaded. Entries older than `MAX_AGE_DAYS` are removed, and the oldest beyond
`MAX_STORE_BYTES`. `VAE_JAX_TEST_CACHE=session` keeps the cache to the run (nothing read
or kept); `VAE_JAX_TEST_CACHE_DIR` moves the store (default
`$XDG_CACHE_HOME/vae-jax/test-xla-cache`, else `~/.cache/...`).
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time
import zlib

MAX_AGE_DAYS = 14
MAX_STORE_BYTES = 2 << 30


def machine_tag() -> str:
    """What compiled code depends on: jax, jaxlib, Python, and the CPU's model and flags."""
    parts = [sys.implementation.name, platform.python_version(), platform.machine()]
    for package in ("jax", "jaxlib"):
        try:
            parts.append(f"{package}={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{package}=none")
    try:
        cpuinfo = pathlib.Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
        parts += sorted({line.split(":", 1)[1].strip() for line in cpuinfo
                         if line.split(":", 1)[0].strip() in ("model name", "flags")})
    except OSError:
        parts.append(platform.processor())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def store_dir() -> pathlib.Path:
    root = os.environ.get("VAE_JAX_TEST_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "vae-jax", "test-xla-cache")
    return pathlib.Path(root) / machine_tag()


def is_whole(data: bytes) -> bool:
    """Whether a cache entry decompresses completely (JAX writes zstd or zlib)."""
    try:
        zlib.decompress(data)
        return True
    except zlib.error:
        pass
    for module in ("compression.zstd", "zstandard"):
        try:
            zstd = __import__(module, fromlist=["decompress"])
        except ImportError:
            continue
        try:
            if module == "zstandard":
                zstd.ZstdDecompressor().decompress(data)
            else:
                zstd.decompress(data)
            return True
        except Exception:  # noqa: BLE001 - any failure means a damaged entry
            return False
    return False


def seed(session: pathlib.Path, store: pathlib.Path) -> set[str]:
    """Links (or copies) the store's entries into the run's folder; returns their names."""
    names = set()
    if not store.is_dir():
        return names
    for entry in store.iterdir():
        if entry.name.startswith("."):
            continue
        try:
            os.link(entry, session / entry.name)
        except OSError:
            try:
                shutil.copyfile(entry, session / entry.name)
            except OSError:
                continue
        names.add(entry.name)
    return names


def keep(session: pathlib.Path, store: pathlib.Path) -> None:
    """Moves the run's new, whole entries (those the store lacks) into the store
    atomically, then prunes it."""
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    for entry in session.iterdir():
        if not entry.is_file() or (store / entry.name).exists():
            continue
        try:
            data = entry.read_bytes()
            if entry.name.endswith("-cache") and not is_whole(data):
                continue
            partial = store / f".{entry.name}.{os.getpid()}.partial"
            partial.write_bytes(data)
            os.replace(partial, store / entry.name)
        except OSError:
            continue
    prune(store)


def prune(store: pathlib.Path, now: float | None = None) -> None:
    """Removes entries older than MAX_AGE_DAYS, then the oldest beyond MAX_STORE_BYTES."""
    now = time.time() if now is None else now
    entries = []
    for entry in store.iterdir():
        try:
            stat = entry.stat()
        except OSError:
            continue
        age = now - stat.st_mtime
        if age > MAX_AGE_DAYS * 86400 or (entry.name.endswith(".partial") and age > 3600):
            entry.unlink(missing_ok=True)
        else:
            entries.append((stat.st_mtime, stat.st_size, entry))
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries, key=lambda item: item[0]):
        if total <= MAX_STORE_BYTES:
            break
        entry.unlink(missing_ok=True)
        total -= size


def environment() -> dict[str, str]:
    """The run's cache folder (seeded from the store, kept at exit) as JAX's environment."""
    session = pathlib.Path(tempfile.mkdtemp(prefix="vae-jax-tests-xla-cache-"))
    atexit.register(shutil.rmtree, session, ignore_errors=True)
    if os.environ.get("VAE_JAX_TEST_CACHE", "keep") != "session":
        store = store_dir()
        seed(session, store)
        atexit.register(keep, session, store)  # runs before the folder's removal
    return dict(JAX_COMPILATION_CACHE_DIR=str(session),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
                # JAX's default puts a folder inside the cache's path into the compile
                # options, and so into every key: a new path each run would miss them all.
                JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES="none")
