"""Shipped experiment files, found with ``importlib.resources`` (works from a clone and a wheel).

``example_path("mnist5k_pgd_at")`` is the survey's §5.2 ablation on the embedded MNIST data.
"""

from __future__ import annotations

import importlib.resources
import pathlib

EXAMPLES = ("mnist5k_pgd_at",)


def example_path(name: str) -> pathlib.Path:
    """The path of a shipped experiment file (``EXAMPLES``)."""
    if name not in EXAMPLES:
        raise KeyError(f"unknown example experiment {name!r}; shipped: {', '.join(EXAMPLES)}")
    ref = importlib.resources.files("robustjax.experiments.examples") / f"{name}.toml"
    with importlib.resources.as_file(ref) as path:
        return pathlib.Path(path)
