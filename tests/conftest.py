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
