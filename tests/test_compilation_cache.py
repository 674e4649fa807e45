"""The suite's compilation cache kept between runs (tests/compilation_cache.py): only whole
entries outlive a run, the store is per machine kind, and it stays bounded."""

import os
import time
import zlib

from tests import compilation_cache


def test_only_whole_new_entries_join_the_store_and_atomically(tmp_path):
    session, store = tmp_path / "session", tmp_path / "store"
    session.mkdir()
    store.mkdir()
    whole = zlib.compress(b"an executable" * 100)
    (store / "old-cache").write_bytes(whole)
    seeded = compilation_cache.seed(session, store)
    assert seeded == {"old-cache"} and (session / "old-cache").read_bytes() == whole

    (session / "new-cache").write_bytes(whole)
    (session / "killed-cache").write_bytes(whole[:len(whole) // 2])  # a writer killed mid-file
    compilation_cache.keep(session, store)

    assert sorted(os.listdir(store)) == ["new-cache", "old-cache"]
    assert (store / "new-cache").read_bytes() == whole


def test_a_damaged_entry_is_not_whole_and_a_zlib_one_is():
    data = zlib.compress(b"x" * 1000)
    assert compilation_cache.is_whole(data)
    assert not compilation_cache.is_whole(data[:-4])
    assert not compilation_cache.is_whole(b"not compressed at all")


def test_the_store_drops_old_entries_then_the_oldest_beyond_its_size(tmp_path, monkeypatch):
    now = time.time()
    for name, age_days in [("stale-cache", compilation_cache.MAX_AGE_DAYS + 1),
                           ("older-cache", 3), ("newer-cache", 1)]:
        path = tmp_path / name
        path.write_bytes(b"x" * 100)
        os.utime(path, (now - age_days * 86400,) * 2)
    compilation_cache.prune(tmp_path, now)
    assert sorted(os.listdir(tmp_path)) == ["newer-cache", "older-cache"]

    monkeypatch.setattr(compilation_cache, "MAX_STORE_BYTES", 150)
    compilation_cache.prune(tmp_path, now)
    assert os.listdir(tmp_path) == ["newer-cache"]


def test_the_store_is_per_cpu_and_jax_version(monkeypatch):
    tag = compilation_cache.machine_tag()
    assert tag == compilation_cache.machine_tag()
    real_read_text = compilation_cache.pathlib.Path.read_text

    def other_cpu(path, *args, **kwargs):
        text = real_read_text(path, *args, **kwargs)
        return text + "\nflags\t: a_flag_no_cpu_has\n" if str(path) == "/proc/cpuinfo" else text

    monkeypatch.setattr(compilation_cache.pathlib.Path, "read_text", other_cpu)
    if os.path.exists("/proc/cpuinfo"):
        assert compilation_cache.machine_tag() != tag
    monkeypatch.undo()
    real_version = compilation_cache.importlib.metadata.version
    monkeypatch.setattr(compilation_cache.importlib.metadata, "version",
                        lambda name: "0.0.1" if name == "jax" else real_version(name))
    assert compilation_cache.machine_tag() != tag


def test_session_mode_reads_and_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_JAX_TEST_CACHE", "session")
    monkeypatch.setenv("VAE_JAX_TEST_CACHE_DIR", str(tmp_path / "store"))
    registered = []
    monkeypatch.setattr(compilation_cache.atexit, "register",
                        lambda function, *args, **kwargs: registered.append(function))
    environment = compilation_cache.environment()
    assert os.listdir(environment["JAX_COMPILATION_CACHE_DIR"]) == []
    assert compilation_cache.keep not in registered
    assert not (tmp_path / "store").exists()
    os.rmdir(environment["JAX_COMPILATION_CACHE_DIR"])


def test_a_later_run_in_a_new_folder_loads_what_an_earlier_one_compiled(tmp_path):
    """Each run's folder is new; the compile options must not name it, or every key misses."""
    import subprocess
    import sys
    run = ("import os; from tests import compilation_cache; "
           "os.environ.update(compilation_cache.environment()); "
           "import jax, jax.numpy as jnp; "
           "jax.jit(lambda x: jnp.sin(x) * 3)(jnp.ones(7)).block_until_ready()")
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("JAX_")}
    environment.update(VAE_JAX_TEST_CACHE_DIR=str(tmp_path), VAE_JAX_TEST_CACHE="keep")
    kept = []
    for _ in range(2):
        subprocess.run([sys.executable, "-c", run], env=environment, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        kept.append(sorted(name for folder in tmp_path.iterdir()
                           for name in os.listdir(folder)))
    assert kept[0] and kept[1] == kept[0]
