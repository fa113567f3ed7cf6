"""Where robustjax caches trained models: ``$ROBUSTJAX_CACHE`` or ``~/.cache/robustjax``."""

from __future__ import annotations

import os
import pathlib

ENV_VAR = "ROBUSTJAX_CACHE"


def cache_dir() -> pathlib.Path:
    """The cache folder (not created here)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return pathlib.Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "robustjax"
