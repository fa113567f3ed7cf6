"""Resumable report results: every section, and every batch of a long section, is stored on disk
under a hash of its config, so an interrupted report reloads what it had finished.

A config is a JSON-able dict (model identity, dataset, examples, seed, section settings, batch
name). ``config_hash`` is the SHA-256 of its canonical JSON. Files are written atomically
(``robustjax.runfiles``: a temporary file in the same folder, then ``os.replace``), so a reader
never sees a half-written result: a run killed mid-write leaves the old file or none, never a
truncated one.

Values are JSON (``ResultStore.cached``) or one numpy array (``ResultStore.cached_array``). A
JSON value is returned as it reads back from disk even when it was just computed, so a resumed
run and an uninterrupted one hand the sections the same Python objects.

Example::

    store = ResultStore(out_dir / "store")
    errors = store.cached("corruption", {"name": "fog", "seed": 0}, lambda: [0.1, 0.2])
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import re
from typing import Any, Callable, Optional

import jax
import numpy as np

from robustjax.runfiles import atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)

HASH_CHARS = 16


def to_jsonable(o: Any) -> Any:
    """numpy / JAX scalars and arrays -> Python numbers and lists (``json.dumps`` default)."""
    if isinstance(o, (np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, (np.ndarray, jax.Array)):
        return np.asarray(o).tolist()
    if isinstance(o, pathlib.PurePath):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=to_jsonable)


def config_hash(config: Any) -> str:
    """A short stable hash (hex) of a JSON-able config: equal configs, equal hashes."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:HASH_CHARS]


def file_hash(path) -> str:
    """SHA-256 (hex, shortened) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:HASH_CHARS]


def params_hash(params: Any) -> str:
    """SHA-256 over every leaf of a params pytree (path, dtype, shape and bytes)."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_leaves_with_path(params)
    for path, leaf in leaves:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:HASH_CHARS]


def _slug(kind: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", kind).strip("_") or "result"


class ResultStore:
    """A folder of results keyed by ``(kind, config)``.

    Args:
      root: the folder (created on the first write).
      fresh: ignore results stored by earlier runs (``--fresh``): everything is recomputed and
        overwritten; results written during this run are still reused.
    """

    def __init__(self, root, fresh: bool = False,
                 agree: Optional[Callable[[bool], bool]] = None):
        self.root = pathlib.Path(root)
        self.fresh = fresh
        # multi-host: a stored result is used only where every process has it (``agree``, a
        # collective), so all processes take the same path through the computation
        self.agree = agree
        self._written: set[pathlib.Path] = set()
        self.loaded: list[str] = []  # what this run read back instead of computing
        self.computed: list[str] = []

    def path(self, kind: str, config: Any, suffix: str = ".json") -> pathlib.Path:
        return self.root / f"{_slug(kind)}-{config_hash({'kind': kind, 'config': config})}{suffix}"

    def _readable(self, path: pathlib.Path) -> bool:
        return path.is_file() and (not self.fresh or path in self._written)

    def load(self, kind: str, config: Any) -> Optional[Any]:
        """The stored JSON value, or None (absent, unreadable, or ``fresh``)."""
        path = self.path(kind, config)
        if not self._readable(path):
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # unreadable: recompute and overwrite
        if record.get("config") != json.loads(canonical_json(config)):
            return None  # a hash collision or a hand-edited file: do not trust it
        return record["value"]

    def save(self, kind: str, config: Any, value: Any) -> pathlib.Path:
        path = self.path(kind, config)
        record = {"kind": kind, "config": config, "value": value}
        atomic_write_text(path, json.dumps(record, default=to_jsonable), f"stored {kind}")
        self._written.add(path)
        return path

    def found(self, present: bool) -> bool:
        """Whether a stored result may be used: ``present`` here and, under a multi-host
        ``agree``, in every process."""
        return present if self.agree is None else self.agree(bool(present))

    def cached(self, kind: str, config: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``(kind, config)``; later calls (and runs) read it back."""
        value = self.load(kind, config)
        if self.found(value is not None):
            self.loaded.append(kind)
            return value
        value = json.loads(json.dumps(compute(), default=to_jsonable))
        self.save(kind, config, value)
        self.computed.append(kind)
        return value

    def cached_array(self, kind: str, config: Any, compute: Callable[[], Any]) -> np.ndarray:
        """Like ``cached`` for one numpy array (stored as ``.npy``)."""
        path = self.path(kind, config, ".npy")
        value = None
        if self._readable(path):
            try:
                value = np.load(path, allow_pickle=False)
            except (OSError, ValueError):
                value = None
        if self.found(value is not None):
            self.loaded.append(kind)
            return value
        value = np.asarray(compute())
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        atomic_write_bytes(path, buf.getvalue(), f"stored {kind}")
        self._written.add(path)
        self.computed.append(kind)
        return value
