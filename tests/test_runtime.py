"""robustjax.runtime: the opt-in malloc setting that lets XLA:CPU reuse its large buffers."""

import ctypes
import sys

import pytest

from robustjax import runtime


def _in_heap(address: int) -> bool:
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith("[heap]"):
                lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
                return lo <= address < hi
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or runtime._glibc() is None,
                    reason="the effect is glibc's (the non-glibc path is tested below)")
def test_large_allocations_move_from_mmap_to_the_heap():
    libc = runtime._glibc()
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 96 * 2**20  # above glibc's largest adaptive mmap threshold (32 MiB)
    p = libc.malloc(size)
    before = _in_heap(p)
    libc.free(p)
    assert runtime.reuse_large_buffers(2**30) is True
    p = libc.malloc(size)
    after = _in_heap(p)
    libc.free(p)
    assert (before, after) == (False, True)


def test_bad_thresholds_and_other_libcs(monkeypatch):
    with pytest.raises(TypeError, match="int"):
        runtime.reuse_large_buffers(1e9)
    with pytest.raises(ValueError, match="1..2147483647"):
        runtime.reuse_large_buffers(0)
    with pytest.raises(ValueError, match="C int"):
        runtime.reuse_large_buffers(2**31)
    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    assert runtime.reuse_large_buffers() is False
