"""robustjax.runtime: the opt-in malloc setting that lets XLA:CPU reuse its large buffers."""

import subprocess
import sys
import textwrap

import pytest

from robustjax import runtime

# In a fresh process: malloc, write and free a 96 MiB buffer twice and count the minor page
# faults of the second round (4 KiB pages: 24,576 if every page is new memory again).
_PROBE = textwrap.dedent("""
    import ctypes, resource, sys
    from robustjax import runtime
    if sys.argv[1] == "reuse":
        assert runtime.reuse_large_buffers(2**30)
    libc = runtime._glibc()
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 96 * 2**20
    for round in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)
        libc.free(p)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(faults)
""")


def _second_round_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux") or runtime._glibc() is None,
                    reason="the effect is glibc's (the non-glibc path is tested below)")
def test_large_buffers_are_reused_without_page_faults():
    pages = 96 * 2**20 // 4096
    assert _second_round_faults("default") > pages // 2  # mmap'd afresh: every page faults
    assert _second_round_faults("reuse") < pages // 10  # the heap's pages are still mapped


def test_bad_thresholds_and_other_libcs(monkeypatch):
    with pytest.raises(TypeError, match="int"):
        runtime.reuse_large_buffers(1e9)
    with pytest.raises(ValueError, match="1..2147483647"):
        runtime.reuse_large_buffers(0)
    with pytest.raises(ValueError, match="C int"):
        runtime.reuse_large_buffers(2**31)
    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    assert runtime.reuse_large_buffers() is False
