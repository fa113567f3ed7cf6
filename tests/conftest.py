"""Shared test set-up: a strict JAX, a private cache, the default model trained once."""

import os
import pathlib
import tempfile

import pytest
from hypothesis import settings

# Tests never read or write the user's cache.
os.environ.setdefault("ROBUSTJAX_CACHE", tempfile.mkdtemp(prefix="robustjax-test-cache-"))

# CI runs the property tests on a fixed example sequence (HYPOTHESIS_PROFILE=ci in .ci/run), so
# a landed run is reproducible; locally hypothesis keeps exploring new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _memory_maps():
    """(mappings of this process, the kernel's limit) on Linux, else None."""
    try:
        with open("/proc/self/maps") as f:
            count = sum(1 for _ in f)
        with open("/proc/sys/vm/max_map_count") as f:
            return count, int(f.read())
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """After a test module, drop JAX's compiled programs once a worker holds many of them.

    Every compiled XLA:CPU program keeps ~3 memory mappings for its machine code, and JAX
    keeps every program it compiled. A pytest-xdist worker runs ~600 tests and reached
    Linux's default limit of 65,530 mappings (``vm.max_map_count``) three quarters of the way
    through the suite: the next compile's mmap failed inside LLVM and the worker died with a
    segfault in ``backend_compile_and_load``. ``jax.clear_caches()`` frees them (measured:
    300 programs, 1,401 -> 508 mappings); later tests compile again (or load from the
    persistent compilation cache)."""
    yield
    maps = _memory_maps()
    if maps is not None and maps[0] > maps[1] // 3:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model, trained (or loaded from the test cache) once per session."""
    from robustjax.models import embedded_default

    return embedded_default()


@pytest.fixture(scope="session")
def mnist_test():
    from robustjax import data

    return data.load("mnist5k", "test")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A fresh, empty cache folder for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROBUSTJAX_CACHE", str(cache))
    return pathlib.Path(cache)


@pytest.fixture(scope="session")
def tiny_resnet():
    """A narrow CIFAR ResNet-18 (one block per stage): built once, it is slow to initialise."""
    from robustjax.models import create

    return create("resnet18_cifar", widths=(4, 8, 8, 8), blocks=(1, 1, 1, 1))
