"""Files of long runs: atomic writes, an up-front check of the output folder, fault injection.

The report, AutoAttack and the ablation runner write every result through ``atomic_write``: the
bytes go to a temporary file in the target's folder (``.<name>.<random>.tmp``), are flushed and
``fsync``'d, then ``os.replace`` renames it over the target. A reader (or a resumed run) sees the
old file or the new one, never a half-written one; a process killed mid-write leaves at most a
stray temporary (``.<name>.<pid>.<random>.tmp``), which ``remove_stale_temporaries`` deletes
when the folder is used again (only those of processes no longer alive).

``preflight(folder, need_bytes, what)`` runs before any compute: it checks that ``folder`` can be
created and written (a probe file, so read-only folders, read-only file systems and a path below
a file are caught even where ``os.access`` says yes) and that the file system has room for the
run's estimated output. A disk that fills up anyway (the estimate is an estimate) makes the next
write raise ``OutputError`` saying what was being written and that a rerun resumes.

Fault injection (for tests, like SQLite's crash tests): ``ROBUSTJAX_FAULT_KILL_AT_WRITE=N``
makes the process SIGKILL itself right after its N-th atomic write (counted from process start);
``N:partial`` kills it during the N-th write, with half the bytes in the temporary file.

Example::

    preflight(out, need_bytes=10 << 20, what="the report")
    atomic_write_text(out / "report.json", json.dumps(report))
"""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import tempfile
from typing import Callable, Union

FAULT_ENV = "ROBUSTJAX_FAULT_KILL_AT_WRITE"
TMP_SUFFIX = ".tmp"
MiB = 1 << 20
# Room kept free beyond a run's estimate (file system metadata, logs, other writers).
MARGIN_BYTES = 8 * MiB
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}

_writes = [0]  # atomic writes completed by this process (fault injection counts them)


class OutputError(OSError):
    """An output folder cannot be written, or its disk is (or would be) full."""

    def __str__(self):  # the message alone, without OSError's "[Errno 28]" prefix
        return self.strerror or super().__str__()


def writes_done() -> int:
    """How many atomic writes this process has completed (fault-injection tests count them)."""
    return _writes[0]


def _die() -> None:  # tests of the fault points (in one process) replace this
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def _fault(index: int, stage: str) -> None:
    """Kill the process if ``ROBUSTJAX_FAULT_KILL_AT_WRITE`` names this write and stage."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    num, _, when = spec.partition(":")
    try:
        target = int(num)
        if when not in ("", "partial"):
            raise ValueError
    except ValueError:
        raise ValueError(f"{FAULT_ENV} must be N or N:partial (N an integer >= 1), got "
                         f"{spec!r}; unset it for a normal run") from None
    if target == index and (when or "after") == stage:
        _die()


def _describe(e: OSError, path: pathlib.Path, what: str) -> OutputError:
    folder = path.parent
    if e.errno in _FULL:
        free = free_bytes(folder)
        return OutputError(e.errno, f"the disk holding {folder} is full ({_size(free)} free) "
                           f"while writing {path.name} ({what}). Free some space (or choose "
                           f"another output folder) and rerun the same command: finished work "
                           f"is kept and resumes.")
    if e.errno in _DENIED:
        return OutputError(e.errno, f"cannot write {path.name} in {folder} ({what}): "
                           f"{os.strerror(e.errno)}. Make the folder writable or choose another "
                           f"output folder; finished work is kept and resumes.")
    return OutputError(e.errno, f"writing {path} ({what}) failed: {e}")


def atomic_write(path, write: Callable, what: str = "results", binary: bool = True
                 ) -> pathlib.Path:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary file that replaces ``path``.

    ``fh`` is a binary (``binary=True``) or text file object. Raises ``OutputError`` (an
    ``OSError``) with a message on a full disk or a folder that cannot be written; the old
    ``path``, if any, is left as it was.
    """
    path = pathlib.Path(path)
    if path.exists() and not path.is_file():  # /dev/null, a FIFO: never rename over them
        with open(path, "wb" if binary else "w") as fh:
            write(fh)
        return path
    index = _writes[0] + 1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=TMP_SUFFIX)
    except OSError as e:
        raise _describe(e, path, what) from e
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have made
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            if os.environ.get(FAULT_ENV):
                fh = _Halfway(fh, index)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise _describe(e, path, what) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _writes[0] = index
    _fault(index, "after")
    return path


class _Halfway:
    """File wrapper for fault injection: the first write stops halfway for ``N:partial``."""

    def __init__(self, fh, index):
        self._fh, self._index = fh, index

    def write(self, data):
        half = len(data) // 2
        self._fh.write(data[:half])
        self._fh.flush()
        os.fsync(self._fh.fileno())
        _fault(self._index, "partial")
        return self._fh.write(data[half:]) + half

    def __getattr__(self, name):
        return getattr(self._fh, name)


def atomic_write_bytes(path, payload: bytes, what: str = "results") -> pathlib.Path:
    """Write ``payload`` to ``path`` atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda fh: fh.write(payload), what)


def atomic_write_text(path, text: str, what: str = "results") -> pathlib.Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_write``)."""
    return atomic_write_bytes(path, text.encode(), what)


def save_figure(fig, path, what: str = "a figure", **savefig_kwargs) -> pathlib.Path:
    """``fig.savefig`` (matplotlib) into ``path`` atomically; the format is ``path``'s suffix."""
    path = pathlib.Path(path)
    fmt = savefig_kwargs.pop("format", path.suffix.lstrip(".") or "png")
    return atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, **savefig_kwargs), what)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def free_bytes(folder) -> int:
    """Bytes available to this user on the file system holding ``folder`` (or its nearest
    existing parent)."""
    folder = _existing_ancestor(pathlib.Path(folder))
    if hasattr(os, "statvfs"):
        st = os.statvfs(folder)
        return st.f_bavail * st.f_frsize
    import shutil  # pragma: no cover (Windows)

    return shutil.disk_usage(folder).free  # pragma: no cover


def _existing_ancestor(path: pathlib.Path) -> pathlib.Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def preflight(folder, need_bytes: int = 0, what: str = "results") -> pathlib.Path:
    """Check, before any compute, that ``folder`` can hold ``need_bytes`` of new output.

    Creates nothing that outlives the call: an existing ``folder`` gets a probe file, a missing
    one a probe folder in its nearest existing parent. Raises ``OutputError`` saying what was
    expected, what was found and what to do. Returns ``folder`` as a path.
    """
    folder = pathlib.Path(folder)
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise OutputError(errno.ENOTDIR, f"cannot create the output folder {folder} for {what}: "
                          f"{base} is a file, not a folder. Choose another output folder.")
    try:
        if base == folder.absolute():
            fd, probe = tempfile.mkstemp(dir=base, prefix=".robustjax-write-probe.")
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
                os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(dir=base, prefix=".robustjax-write-probe."))
    except OSError as e:
        raise OutputError(e.errno, f"cannot write {what} into {folder}: {base} is not writable "
                          f"({os.strerror(e.errno) if e.errno else e}). Make it writable, or "
                          f"choose another output folder.") from e
    free = free_bytes(base)
    if need_bytes + MARGIN_BYTES > free:
        raise OutputError(errno.ENOSPC, f"not enough free space for {what} in {folder}: about "
                          f"{_size(need_bytes)} needed (plus {_size(MARGIN_BYTES)} to spare), "
                          f"{_size(free)} free. Free some space or choose another output "
                          f"folder.")
    return folder


def remove_stale_temporaries(folder: Union[str, os.PathLike]) -> list:
    """Delete the temporaries that ``atomic_write`` left in ``folder`` when its process was
    killed mid-write (``.<name>.<pid>.<random>.tmp`` of a process no longer alive); returns
    their names. Temporaries of live processes (another run writing there) are kept."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    for p in sorted(folder.iterdir()):
        if not (p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file()):
            continue
        parts = p.name[:-len(TMP_SUFFIX)].rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit() or _alive(int(parts[1])):
            continue
        try:
            p.unlink()
            gone.append(p.name)
        except OSError:
            pass
    return gone


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True
