"""JAX's persistent compilation cache, on by default under the robustjax cache folder.

A first call of an attack or corruption compiles for seconds (XLA:CPU), and every new process
compiled it again. On ``import robustjax`` this module points JAX's persistent compilation cache
(``jax_compilation_cache_dir``) at ``$ROBUSTJAX_CACHE/jax-compilation-cache/<cpu>/`` (see
:func:`robustjax.cache.cache_dir`; ``<cpu>`` is a hash of the processor's model and feature
flags, so a cache folder shared between machines never hands one CPU code compiled for
another), so a second process loads the compiled programs from disk instead of compiling them.

* Switch: ``ROBUSTJAX_COMPILATION_CACHE=0`` (or ``false``/``off``/``no``) before the import, or
  :func:`disable` at any time; :func:`enable` turns it on again (or elsewhere).
* A JAX cache the user configured is left alone: when ``jax_compilation_cache_dir`` is already
  set (``jax.config.update`` before the import, or ``JAX_COMPILATION_CACHE_DIR``), or JAX's
  cache is switched off (``JAX_ENABLE_COMPILATION_CACHE=0``), the import changes nothing.
* Importing never fails: a cache folder that cannot be created or written (read-only disk, a
  path below a file) leaves the cache off; :func:`status` says why.
* With robustjax's folder every compiled program is written, however small and quickly
  compiled (``MIN_COMPILE_TIME_SECS``; JAX's default, 1 s, would skip most corruptions and small
  attacks on a CPU); a ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` the user set is kept.

Programs with robustjax's oneDNN convolutions (XLA FFI custom calls) are cached too: the
executable names its handlers, which are registered when the convolution is traced
(:func:`robustjax.kernels.status`), before JAX looks the program up. JAX writes an entry with one
``write`` (not atomically): a process that reads an entry while another writes it, or an entry
left half-written by a killed process, makes JAX warn "Error reading persistent compilation
cache entry" and compile the program again (a torn entry fails to decompress, so it is never
run); JAX does not replace an entry that exists, so deleting the folder clears such an entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
import platform
import tempfile
from typing import Optional

import jax

from robustjax.cache import cache_dir

ENV_VAR = "ROBUSTJAX_COMPILATION_CACHE"
SUBDIR = "jax-compilation-cache"
# Every program (JAX's default, 1 s, skips most corruptions and small attacks on a CPU). Measured
# on `robustjax report --quick` (benchmarks/results/compile_cache.md): 367 of its 477 programs
# compile in < 0.05 s, 9 s in all; with 0.05 a second process still compiled them (42.4 s),
# with 0 it loads all 461 distinct ones (38.2 s; 9.6 MiB instead of 8.7).
MIN_COMPILE_TIME_SECS = 0.0
_OFF = ("0", "false", "off", "no")

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Status:
    """Whether robustjax's persistent compilation cache is in use, where, and if not, why."""

    enabled: bool
    reason: str
    path: Optional[pathlib.Path] = None


_status = Status(False, "not set up yet (robustjax.compilation_cache.enable() turns it on)")
_saved: dict = {}  # the JAX settings enable() changed, restored by disable()


def status() -> Status:
    """Where JAX's compilation cache is, as robustjax set it up (or why it is off)."""
    return _status


def _cpu_tag() -> str:
    """A short hash of the processor's model and feature flags (XLA:CPU compiles for them)."""
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.partition(":")[0].strip()
                if key in ("vendor_id", "model name", "flags", "Features", "CPU implementer",
                           "CPU part"):
                    parts.append(line.strip())
                elif not line.strip() and len(parts) > 2:
                    break  # the first processor's block is enough
    except OSError:
        parts.append(platform.processor())
    return "cpu-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def default_path() -> pathlib.Path:
    """``$ROBUSTJAX_CACHE/jax-compilation-cache/<cpu>``, the folder :func:`enable` uses."""
    return cache_dir() / SUBDIR / _cpu_tag()


def _writable(path: pathlib.Path) -> str:
    """'' when ``path`` exists (created here if need be) and a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{path} cannot be written ({type(e).__name__}: {e})"
    return ""


def _reset_jax_cache() -> None:
    """Make JAX read its cache settings again at the next compilation."""
    from jax.experimental.compilation_cache import compilation_cache as jcc

    jcc.reset_cache()


def _set(name: str, value) -> None:
    if name not in _saved:
        _saved[name] = getattr(jax.config, name)
    jax.config.update(name, value)


def enable(path=None, *, min_compile_time_secs: Optional[float] = None) -> Status:
    """Cache compiled programs in ``path`` (default :func:`default_path`) from now on.

    Overrides a ``jax_compilation_cache_dir`` set elsewhere (the import does not). Returns the
    new :func:`status`; a folder that cannot be written leaves the cache off (never raises for
    that). ``min_compile_time_secs`` (default ``MIN_COMPILE_TIME_SECS``, or the
    ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` the user set): shorter compilations are not
    written.
    """
    global _status
    target = pathlib.Path(path).expanduser() if path is not None else default_path()
    target = pathlib.Path(os.path.abspath(target))  # a relative $ROBUSTJAX_CACHE: fixed now
    why = _writable(target)
    if why:
        disable()
        _status = Status(False, f"off: {why}")
        logger.info("robustjax: persistent compilation cache %s", _status.reason)
        return _status
    if min_compile_time_secs is None:
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" in os.environ:
            min_compile_time_secs = jax.config.jax_persistent_cache_min_compile_time_secs
        else:
            min_compile_time_secs = MIN_COMPILE_TIME_SECS
    _set("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    if ("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ
            and jax.config.jax_persistent_cache_min_entry_size_bytes == 0):
        _set("jax_persistent_cache_min_entry_size_bytes", -1)  # any size (and no override)
    if not jax.config.jax_enable_compilation_cache:
        _set("jax_enable_compilation_cache", True)
    _set("jax_compilation_cache_dir", str(target))
    _reset_jax_cache()
    _status = Status(True, f"compiled programs are cached in {target}", target)
    return _status


def disable() -> Status:
    """Stop using the cache :func:`enable` set up (JAX settings back as they were before it).

    Entries already written stay on disk; a cache the user configured is left alone.
    """
    global _status
    if _status.enabled:
        for name, value in reversed(list(_saved.items())):
            jax.config.update(name, value)
        _saved.clear()
        _reset_jax_cache()
    _status = Status(False, "switched off by robustjax.compilation_cache.disable()")
    return _status


def _enable_on_import() -> None:
    """What ``import robustjax`` does: :func:`enable` unless switched off or set up by the user.

    Never raises: any failure leaves the cache off, with the reason in :func:`status`.
    """
    global _status
    try:
        if os.environ.get(ENV_VAR, "1").strip().lower() in _OFF:
            _status = Status(False, f"switched off by {ENV_VAR}")
        elif "JAX_COMPILATION_CACHE_DIR" in os.environ or jax.config.jax_compilation_cache_dir:
            _status = Status(False, "left to the user: jax_compilation_cache_dir is set "
                             f"({jax.config.jax_compilation_cache_dir!r})")
        elif not jax.config.jax_enable_compilation_cache:
            _status = Status(False, "left to the user: jax_enable_compilation_cache is False")
        else:
            enable()
    except Exception as e:  # noqa: BLE001 -- the import must not fail for a cache
        _status = Status(False, f"off: setting it up failed ({type(e).__name__}: {e})")
        logger.info("robustjax: persistent compilation cache %s", _status.reason)
