"""Process-level settings for running robustjax on a CPU (opt-in; nothing here runs on import).

``memory_saving_schedule``: XLA:CPU's default instruction scheduler orders a program for
parallelism, and in doing so it runs the recomputations of rematerialised blocks
(``models.create(..., remat=True)``, ``nn.remat``, ``jax.checkpoint``) long before the backward
pass needs them, which keeps their activations alive together and undoes most of the saving.
Measured on ConvNeXt-T at batch 8 (XLA's temporary buffers of one input gradient,
``benchmarks/results/memory_pgd.md``): 1,152 MiB, 1,018 MiB with remat; with this schedule
909 MiB, and 336 MiB with remat (3.4x less), at the same speed.

``reuse_large_buffers``: XLA:CPU allocates the outputs and temporaries of every call with
``malloc``. glibc serves allocations above its mmap threshold (adaptive, at most 32 MiB; a
64-image 224 x 224 x 3 float32 batch is 38.5 MiB) with a fresh ``mmap`` and unmaps them on
``free``, so every call page-faults each 4 KiB page it writes while the kernel zeroes it. With a
higher threshold those buffers come from malloc's heap and later calls reuse them. Measured on a
2-core VM (``benchmarks/corruptions_speed.py --reuse-buffers``): the 19 corruptions of a
64-image batch 1.45x faster in total (brightness 2.9x, snow and defocus 1.9x); PGD-10 on
ResNet-18 at batch 128 1.13x faster (``benchmarks/attacks_pgd_speed.py --reuse-buffers``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MEMORY_SAVING_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1


def _glibc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # mallopt's parameter numbers are glibc's; musl and BSD libcs differ or lack it
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def reuse_large_buffers(threshold_bytes: int = 2**30) -> bool:
    """Make glibc's ``malloc`` serve allocations below ``threshold_bytes`` from its heap instead
    of fresh ``mmap``s, and keep up to ``threshold_bytes`` of freed memory mapped at the heap's
    top, so XLA:CPU's large per-call buffers are reused without page faults.

    Process-wide and lasting: the heap keeps its high-water mark instead of returning freed
    large buffers to the system (resident memory stays at the peak of the largest call).
    Returns True when applied, False without glibc (macOS, Windows, musl), where it does
    nothing. The same settings from the shell: ``MALLOC_MMAP_THRESHOLD_=<bytes>
    MALLOC_TRIM_THRESHOLD_=<bytes>``.
    """
    if isinstance(threshold_bytes, bool) or not isinstance(threshold_bytes, int):
        raise TypeError(f"threshold_bytes must be an int, got {type(threshold_bytes).__name__}")
    if not 0 < threshold_bytes <= _INT_MAX:
        raise ValueError(f"threshold_bytes must be in 1..{_INT_MAX} (mallopt takes a C int), "
                         f"got {threshold_bytes}")
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # both: below the mmap threshold a buffer comes from the heap, and below the trim threshold
    # the free memory at the heap's top is kept mapped instead of being handed back
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes)
                and libc.mallopt(_M_TRIM_THRESHOLD, threshold_bytes))


def memory_saving_schedule() -> bool:
    """Schedule XLA:CPU programs for memory instead of parallelism (see the module docstring).

    XLA reads its flags once, when JAX starts its backends, so this must run before the first
    JAX computation of the process (importing robustjax does not start them). It adds
    ``MEMORY_SAVING_FLAG`` to ``XLA_FLAGS``; the same from the shell:
    ``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false``. Returns True when the
    flag is (now) in effect. Programs on GPUs and TPUs are unaffected (the flag is XLA:CPU's).

    Raises:
      RuntimeError: JAX's backends already started without the flag.
    """
    from jax._src import xla_bridge

    flags = os.environ.get("XLA_FLAGS", "")
    if MEMORY_SAVING_FLAG in flags.split():
        return True
    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "memory_saving_schedule() must run before the first JAX computation: XLA read its "
            "flags when JAX started its backends. Call it right after `import robustjax`, or "
            f"start Python with XLA_FLAGS={MEMORY_SAVING_FLAG}")
    os.environ["XLA_FLAGS"] = f"{flags} {MEMORY_SAVING_FLAG}".strip()
    return True
