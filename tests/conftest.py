"""Shared test set-up: a strict JAX, a private cache, the default model trained once."""

import os
import pathlib
import tempfile

import pytest

# Tests never read or write the user's cache.
os.environ.setdefault("ROBUSTJAX_CACHE", tempfile.mkdtemp(prefix="robustjax-test-cache-"))



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
