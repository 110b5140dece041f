"""The persistent compilation cache: where it lives, and that a relaunch loads instead of compiling.

Two `launch.py` runs of the offline default's first stage (pretrain, on a
smaller corpus and model) into fresh workdirs share a cache directory: the
first fills it, the second loads every program from it. Counted from the
progress line the stage prints, not timed.
"""

import os
import re
import subprocess
import sys

import pytest

from rlhf_jax.infra import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE_RE = re.compile(r"^\[(\w+)\] done in \d+s \(compile [\d.]+s: (\d+) programs, (\d+) from the cache\)$")


def test_cache_dir_precedence(monkeypatch):
    for var in ("RLHF_JAX_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", "/home/u")
    assert compile_cache.resolve_dir() == "/home/u/.cache/rlhf_jax/jax"
    monkeypatch.setenv("XDG_CACHE_HOME", "/x")
    assert compile_cache.resolve_dir() == "/x/rlhf_jax/jax"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/j")
    assert compile_cache.resolve_dir() == "/j"
    monkeypatch.setenv("RLHF_JAX_COMPILE_CACHE", "/r")
    assert compile_cache.resolve_dir() == "/r"
    assert compile_cache.resolve_dir("/flag") == "/flag"


def test_stats_difference_and_description():
    a = compile_cache.CompileStats(seconds=5.0, programs=12, cache_hits=4)
    b = compile_cache.CompileStats(seconds=1.5, programs=2, cache_hits=1)
    assert (a - b) == compile_cache.CompileStats(seconds=3.5, programs=10, cache_hits=3)
    assert (a - b).describe() == "compile 3.5s: 10 programs, 3 from the cache"
    assert compile_cache.CompileStats().describe() == "compile 0.0s, no new programs"


def _launch(workdir, *flags) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    args = [sys.executable, os.path.join(ROOT, "launch.py"),
            "--config=configs/mock_sentiment.py:runlocal", "--config.stages=pretrain",
            "--config.pretrain.num_docs=200", "--config.model.n_layer=1", f"--workdir={workdir}",
            *flags]
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    stages = {}
    for line in out.stdout.splitlines():
        m = STAGE_RE.match(line)
        if m:
            stages[m[1]] = (int(m[2]), int(m[3]))
    assert sorted(stages) == ["pretrain"], out.stdout[-2000:]
    return stages


@pytest.fixture(scope="module")
def two_launches(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compile_cache")
    cache = tmp / "cache"
    first = _launch(tmp / "first", f"--compile_cache_dir={cache}")
    entries = len(os.listdir(cache))
    second = _launch(tmp / "second", f"--compile_cache_dir={cache}")
    return first, entries, second, cache


def test_relaunch_into_a_fresh_workdir_loads_every_program(two_launches):
    first, entries, second, cache = two_launches
    # The first launch compiles everything (the directory starts empty).
    for stage, (programs, hits) in first.items():
        assert programs > 5 and hits == 0, (stage, programs, hits)
    assert entries >= sum(p - h for p, h in first.values())
    # The same programs again, all from the cache; nothing new is written.
    for stage, (programs, hits) in second.items():
        assert hits == programs == first[stage][0], (stage, programs, hits)
    assert len(os.listdir(cache)) == entries


def test_nocompile_cache_compiles_everything(two_launches, tmp_path):
    first, entries, _, cache = two_launches
    off = _launch(tmp_path / "off", f"--compile_cache_dir={cache}", "--nocompile_cache")
    assert off["pretrain"] == (first["pretrain"][0], 0)
    assert len(os.listdir(cache)) == entries


def test_entries_without_access_times_are_repaired_so_writes_succeed(tmp_path):
    # A cache written without a size limit has no `-atime` files; with the limit
    # JAX's eviction reads them before every write, and each write failed.
    from jax._src.lru_cache import LRUCache

    (tmp_path / "old-cache").write_bytes(b"x" * 10)
    (tmp_path / "new-cache").write_bytes(b"y" * 10)
    (tmp_path / "new-atime").write_bytes((5).to_bytes(8, "little"))
    cache = LRUCache(str(tmp_path), max_size=1 << 20)
    with pytest.raises(FileNotFoundError):
        cache.put("fresh", b"z")
    assert compile_cache.add_missing_atimes(str(tmp_path)) == 1
    stamp = int.from_bytes((tmp_path / "old-atime").read_bytes(), "little")
    assert stamp == os.stat(tmp_path / "old-cache").st_mtime_ns
    assert int.from_bytes((tmp_path / "new-atime").read_bytes(), "little") == 5  # kept
    cache.put("fresh", b"z")
    assert cache.get("fresh") == b"z"
    assert compile_cache.add_missing_atimes(str(tmp_path)) == 0
