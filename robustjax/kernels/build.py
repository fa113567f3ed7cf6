"""Find, compile once and load the oneDNN convolution kernels (``onednn_conv.cc``).

The kernels are XLA FFI handlers. They are compiled on first use with the machine's C++
compiler against JAX's FFI headers and the oneDNN of PyPI's ``onednn-cpu-gomp`` /
``onednn-devel-cpu-gomp`` (installed with robustjax on Linux x86-64), into
``$ROBUSTJAX_CACHE/kernels/<hash>/``: about 3 s, once per source, jaxlib and oneDNN version. A
missing compiler, header or library is never an error: :func:`status` says why, and
convolutions stay on XLA's own kernels.

``ROBUSTJAX_ONEDNN=0`` switches the kernels off for the whole process.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

import jax

from robustjax.cache import cache_dir

SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
ENV_VAR = "ROBUSTJAX_ONEDNN"
TARGETS = {"robustjax_conv_forward": "RobustjaxConvForward",
           "robustjax_conv_backward_data": "RobustjaxConvBackwardData",
           "robustjax_conv_backward_weights": "RobustjaxConvBackwardWeights"}


@dataclasses.dataclass(frozen=True)
class Status:
    """Whether the oneDNN kernels are in use, and if not, why."""

    available: bool
    reason: str
    library: Optional[str] = None


def _dist_file(dist: str, suffix: str) -> Optional[pathlib.Path]:
    """The installed file of distribution ``dist`` whose path ends with ``suffix``."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/").endswith(suffix):
            path = pathlib.Path(f.locate()).resolve()
            if path.exists():
                return path
    return None


def _find_onednn() -> tuple[Optional[pathlib.Path], Optional[pathlib.Path], str]:
    """(include dir, libdnnl.so.3, why not) from the PyPI wheels or $ONEDNN_ROOT."""
    root = os.environ.get("ONEDNN_ROOT")
    if root:
        inc = pathlib.Path(root) / "include"
        libs = [pathlib.Path(root) / d / "libdnnl.so.3" for d in ("lib", "lib64")]
        lib = next((p for p in libs if p.exists()), None)
        if (inc / "oneapi" / "dnnl" / "dnnl.hpp").exists() and lib:
            return inc, lib, ""
        return None, None, f"ONEDNN_ROOT={root} has no include/oneapi/dnnl/dnnl.hpp or lib/libdnnl.so.3"
    header = _dist_file("onednn-devel-cpu-gomp", "/oneapi/dnnl/dnnl.hpp")
    lib = _dist_file("onednn-cpu-gomp", "/libdnnl.so.3")
    if header is None or lib is None:
        return None, None, ("oneDNN not installed: pip install onednn-cpu-gomp "
                            "onednn-devel-cpu-gomp (or set ONEDNN_ROOT)")
    return header.parents[2], lib, ""


def _compile(out: pathlib.Path, inc: pathlib.Path, lib: pathlib.Path, cxx: str) -> str:
    """Compile into ``out`` atomically (concurrent test workers race here); '' or the error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-Wno-attributes", "-Wno-return-type",
           f"-I{inc}", f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp,
           f"-L{lib.parent}", f"-l:{lib.name}", f"-Wl,-rpath,{lib.parent}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        os.unlink(tmp)
        return f"{cxx} failed to run: {e}"
    if proc.returncode != 0:
        os.unlink(tmp)
        return f"compiling {SOURCE.name} failed:\n{proc.stderr[-2000:]}"
    os.replace(tmp, out)
    return ""


@functools.lru_cache(maxsize=None)
def status() -> Status:
    """Load (compiling on first use) the kernels and register them with XLA, once a process."""
    return load()


def load() -> Status:
    """What :func:`status` does, uncached: find oneDNN, compile if needed, load, register."""
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "off", "no"):
        return Status(False, f"switched off by {ENV_VAR}")
    if not sys.platform.startswith("linux"):
        return Status(False, f"oneDNN kernels are built on Linux only (this is {sys.platform})")
    inc, lib, why = _find_onednn()
    if inc is None:
        return Status(False, why)
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        return Status(False, "no C++ compiler (install g++ or set CXX)")
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), jax.__version__.encode(), str(lib).encode(), cxx.encode()):
        digest.update(part)
    out = cache_dir() / "kernels" / digest.hexdigest()[:16] / "librobustjax_onednn.so"
    if not out.exists():
        err = _compile(out, inc, lib, cxx)
        if err:
            return Status(False, err)
    try:
        handle = ctypes.cdll.LoadLibrary(str(out))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handle, symbol)),
                                        platform="cpu")
    except (OSError, AttributeError) as e:
        return Status(False, f"loading {out} failed: {e}")
    return Status(True, "oneDNN convolution kernels in use on CPU", str(out))
