"""A persistent compilation cache in the workdir: a restarted run loads its compiled programs.

After a preemption the relaunched run (same program, same devices) would otherwise compile the train
step and every evaluation program again, minutes for a large model on a pod. JAX keys each entry by
the program, the devices and the compile options, so one cache per workdir is safe to share between
the runs of that workdir; on a pod it lives in the bucket beside the checkpoints (JAX reads and
writes it through etils.epath, and only process 0 writes entries).

Only programs that took at least `MIN_COMPILE_SECONDS` to compile are stored: a smaller one compiles
about as fast as it downloads. JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS /
JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES in the environment take precedence, and so does
JAX_COMPILATION_CACHE_DIR: one cache (local or gs://) shared by every run that names it (the test
suite shares one among all its runs, subprocesses included). Inside `shared(directory)` every run
uses that directory instead of its workdir's (the loop's stages share `<loop workdir>/
compilation_cache`: an adaptation loads the train step another adaptation compiled). XLA's own GPU
caches (autotuning results, kernels), which JAX puts under the same directory, write local files
only, so they are turned off for a cache in a bucket.
"""

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import jax
from jax.experimental.compilation_cache import compilation_cache

from querit_jax import storage

MIN_COMPILE_SECONDS = 1.0
MIN_ENTRY_BYTES = 0  # any size: the compile time decides

_HIT = "/jax/compilation_cache/cache_hits"
_WRITE = "/jax/compilation_cache/cache_misses"  # recorded when an entry is written


@dataclasses.dataclass
class CacheStats:
    """Programs loaded from the cache (`hits`) and stored into it (`writes`) during a run."""

    directory: str | None = None
    hits: int = 0
    writes: int = 0

    def _count(self, event: str, **kwargs) -> None:
        del kwargs
        if event == _HIT:
            self.hits += 1
        elif event == _WRITE:
            self.writes += 1


_shared: list[str] = []


@contextlib.contextmanager
def shared(directory: str) -> Iterator[None]:
    """Runs inside use `directory` (unless $JAX_COMPILATION_CACHE_DIR names another)."""
    _shared.append(directory)
    try:
        yield
    finally:
        _shared.pop()


@contextlib.contextmanager
def persistent_cache(workdir: str, enabled: bool, log) -> Iterator[CacheStats]:
    """Uses `<workdir>/compilation_cache` ($JAX_COMPILATION_CACHE_DIR, else a `shared` directory,
    first) for the programs compiled inside; yields their CacheStats.

    The previous JAX settings are restored on exit (several runs in one process use their own
    workdir's cache).
    """
    stats = CacheStats()
    if not enabled:
        yield stats
        return
    stats.directory = (
        os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or (_shared[-1] if _shared else "")
        or storage.join(workdir, "compilation_cache")
    )
    settings = {"jax_compilation_cache_dir": stats.directory}
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        settings["jax_persistent_cache_min_compile_time_secs"] = MIN_COMPILE_SECONDS
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
        settings["jax_persistent_cache_min_entry_size_bytes"] = MIN_ENTRY_BYTES
    if storage.is_remote(stats.directory):
        settings["jax_persistent_cache_enable_xla_caches"] = "none"
    previous = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # JAX opens the cache once: make it open this one
    jax.monitoring.register_event_listener(stats._count)
    log(
        f"Compilation cache: {stats.directory} (programs that compile in "
        f"{jax.config.jax_persistent_cache_min_compile_time_secs:g} s or more)."
    )
    try:
        yield stats
    finally:
        jax.monitoring.unregister_event_listener(stats._count)
        for name, value in previous.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()
