"""Saving and loading robustjax parameter files (``.npz``: flattened pytree + JSON metadata).

A file holds every array of a flax variables dict under its ``/``-joined path, plus the
``ModelSpec`` and free-form metadata as JSON. Loading rebuilds the exact nested dict.
Files are never overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import pathlib
import zipfile
from typing import Any, Mapping, Optional

import jax
import numpy as np

from robustjax import runfiles
from robustjax.types import ModelSpec
from robustjax.weights import CheckpointError  # noqa: F401 - one error type for all formats

_SPEC_KEY = "__robustjax_spec__"
_META_KEY = "__robustjax_meta__"
_FORMAT = "robustjax-params-v1"


def flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict of arrays -> ``{"a/b/c": array}``."""
    out = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            if "/" in str(k):
                raise ValueError(f"parameter name {k!r} contains '/', which is the separator")
            out.update(flatten(v, f"{prefix}{k}/"))
    else:
        out[prefix[:-1]] = tree
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    """Inverse of ``flatten``."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save(path, variables: Any, spec: Optional[ModelSpec] = None,
         metadata: Optional[dict] = None, overwrite: bool = False) -> pathlib.Path:
    """Write ``variables`` (and spec/metadata) to ``path`` (``.npz`` is appended if missing).

    Raises FileExistsError if the file exists and ``overwrite`` is False. The write goes to a
    temporary file first and is renamed into place, so an interrupted save never leaves a
    truncated checkpoint behind.
    """
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --force) to "
                              f"replace it, or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v) for k, v in flatten(jax.device_get(variables)).items()}
    meta = {"format": _FORMAT, **(metadata or {})}
    payload = {k: v for k, v in flat.items()}
    payload[_SPEC_KEY] = np.frombuffer(
        json.dumps(spec.to_dict() if spec else None).encode(), np.uint8)
    payload[_META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return runfiles.atomic_write(path, lambda fh: np.savez(fh, **payload), "parameters")


def is_robustjax_file(arrays) -> bool:
    """True if a mapping of arrays read from an ``.npz`` was written by ``save``."""
    return _META_KEY in arrays


def from_arrays(arrays, source: str = "arrays") -> tuple[dict, Optional[ModelSpec], dict]:
    """Split the arrays of a file written by ``save`` -> ``(variables, spec, metadata)``."""
    arrays = dict(arrays)
    if _META_KEY not in arrays:
        raise CheckpointError(f"{source} is an .npz file but not a robustjax parameter file "
                              f"(no metadata entry); write it with robustjax.checkpoint.save")
    try:
        meta = json.loads(np.asarray(arrays.pop(_META_KEY), np.uint8).tobytes().decode())
        spec_dict = json.loads(np.asarray(arrays.pop(_SPEC_KEY), np.uint8).tobytes().decode())
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{source}: corrupt metadata ({e})") from None
    if meta.get("format") != _FORMAT:
        raise CheckpointError(f"{source}: unknown format {meta.get('format')!r}, "
                              f"expected {_FORMAT!r}")
    spec = ModelSpec.from_dict(spec_dict) if spec_dict is not None else None
    return unflatten(arrays), spec, meta


def load(path) -> tuple[dict, Optional[ModelSpec], dict]:
    """Read a file written by ``save`` -> ``(variables, spec or None, metadata)``."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no parameter file at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"{path} is not a readable .npz parameter file ({e}); it may be "
                              f"truncated or corrupt") from None
    return from_arrays(arrays, str(path))
