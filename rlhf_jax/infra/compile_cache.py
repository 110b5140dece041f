"""Compilation paid once: JAX's persistent compilation cache, and compile-time accounting.

Every `launch.py` run (and every sweep) keeps compiled programs on disk, so a
relaunch, another run of the same config, or a later stage whose program is
identical to an earlier one loads it instead of compiling. The directory, first
match wins:

  1. `launch.py --compile_cache_dir=DIR` (`--nocompile_cache` turns the cache off);
  2. `$RLHF_JAX_COMPILE_CACHE`;
  3. `$JAX_COMPILATION_CACHE_DIR` (JAX's own variable);
  4. `$XDG_CACHE_HOME/rlhf_jax/jax`, else `~/.cache/rlhf_jax/jax`.

The cache key is the compiled program (HLO, compile options, device kind,
JAX version), never a Python object, so two stages that trace the same
function at the same shapes share one entry. Entries are never stale; delete
the directory to reclaim the space.

`CompileStats` counts, from JAX's monitoring events, the seconds spent tracing,
lowering and compiling (or loading from the cache) and how many programs came
from the cache; the pipeline prints it per stage.
"""

from __future__ import annotations

import dataclasses
import os
import threading

_ENV = "RLHF_JAX_COMPILE_CACHE"
_configured: str | None | bool = False  # False: never configured; None: off; str: the dir


def default_dir() -> str:
    """The user cache directory, per the XDG base directory convention."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rlhf_jax", "jax")


def resolve_dir(flag_dir: str | None = None) -> str:
    return (flag_dir or os.environ.get(_ENV) or os.environ.get("JAX_COMPILATION_CACHE_DIR")
            or default_dir())


# A size limit makes JAX hold a file lock around every read and write of the
# cache. Without one, processes sharing it (a sweep split over launches, test
# workers) can read an entry another is still writing, and loading that torn
# executable crashes the reader (a segfault, seen with two pytest workers).
MAX_BYTES = 16 << 30


def enable(cache_dir: str | None = None, *, off: bool = False) -> str | None:
    """Turns the persistent cache on at `resolve_dir(cache_dir)` (or off); returns the dir.

    The first call decides; later calls (a sweep inside a launch) keep it.
    Every program is cached, however quick its compile: at runlocal sizes
    hundreds of programs of 0.05 to 2 s each make most of a run's compile time.
    """
    global _configured
    import jax

    if _configured is not False:
        return _configured or None
    track()
    if off:
        jax.config.update("jax_enable_compilation_cache", False)
        _configured = None
        return None
    path = os.path.abspath(os.path.expanduser(resolve_dir(cache_dir)))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    add_missing_atimes(path)
    _configured = path
    return path


def add_missing_atimes(path: str) -> int:
    """Gives every entry of a cache dir its access-time file; returns how many were added.

    With a size limit JAX reads each entry's `<key>-atime` before every write
    (to evict the least recently used); an entry without one, written by a
    run without the limit (earlier versions of this project), makes every
    later write fail with a warning, so nothing new is ever cached. The
    missing times are the entries' modification times.
    """
    added = 0
    for name in os.listdir(path):
        if not name.endswith("-cache"):
            continue
        entry = os.path.join(path, name)
        atime = entry[: -len("-cache")] + "-atime"
        if os.path.exists(atime):
            continue
        try:
            stamp = os.stat(entry).st_mtime_ns.to_bytes(8, "little")
            with open(atime, "wb") as f:
                f.write(stamp)
            added += 1
        except OSError:  # evicted meanwhile by another process, or read-only
            pass
    return added


@dataclasses.dataclass
class CompileStats:
    """Cumulative compile work in this process (subtract two snapshots for a stage)."""

    seconds: float = 0.0  # tracing + lowering + backend compile or cache load
    programs: int = 0  # backend compiles requested (each a miss or a hit)
    cache_hits: int = 0  # of those, loaded from the persistent cache

    def __sub__(self, other: "CompileStats") -> "CompileStats":
        return CompileStats(self.seconds - other.seconds, self.programs - other.programs,
                            self.cache_hits - other.cache_hits)

    def describe(self) -> str:
        if not self.programs:
            return f"compile {self.seconds:.1f}s, no new programs"
        return (f"compile {self.seconds:.1f}s: {self.programs} programs, "
                f"{self.cache_hits} from the cache")


_EVENTS_S = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_stats = CompileStats()
_lock = threading.Lock()
_tracking = False


def _on_duration(event: str, seconds: float, **_) -> None:
    if event in _EVENTS_S:
        with _lock:
            _stats.seconds += seconds
            _stats.programs += event == _EVENTS_S[2]


def _on_event(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        with _lock:
            _stats.cache_hits += 1


def track() -> None:
    """Starts counting (idempotent); `stats()` before this reads zeros."""
    global _tracking
    from jax import monitoring

    if not _tracking:
        monitoring.register_event_duration_secs_listener(_on_duration)
        monitoring.register_event_listener(_on_event)
        _tracking = True


def stats() -> CompileStats:
    with _lock:
        return dataclasses.replace(_stats)
