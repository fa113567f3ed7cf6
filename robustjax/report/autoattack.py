"""AutoAttack evaluations with files: a resumable state file and a RobustBench-style entry.

``robustjax.attacks.autoattack`` computes; this module (like the rest of ``report/``) owns the
files. The state is written after every batch atomically (``robustjax.runfiles``: a temporary
file, then ``os.replace``), so an interrupted evaluation (even one killed mid-write) resumes
from its last finished batch with the same result as an uninterrupted one. The state records a
fingerprint of the model's parameters, the data and the key: a state file of another model,
dataset or seed is refused instead of silently mixed in. Before any compute the state's folder
is checked for writability and room for two copies of the state (``state_bytes``).

Example::

    entry = run_autoattack(model, x, y, AutoAttackConfig(eps=0.3), state_path="aa.state.npz",
                           log=print)
    json.dump(entry, open("entry.json", "w"))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import zipfile
from typing import Callable, Optional

import jax
import numpy as np

from robustjax import runfiles

from robustjax.attacks.autoattack import (
    DISPLAY_NORM,
    AutoAttackConfig,
    AutoAttackResult,
    AutoAttackState,
    autoattack,
)

STATE_FORMAT = "robustjax-autoattack-state-v1"
_ARRAYS = ("robust", "broken_by", "x_adv", "todo")


def save_state(path, state: AutoAttackState, fingerprint: str = "") -> None:
    """Write ``state`` to ``path`` (npz) atomically (``robustjax.runfiles.atomic_write``).

    ``fingerprint`` (``fingerprint(...)``) names the model, data and key it belongs to."""
    meta = {k: v for k, v in dataclasses.asdict(state).items() if k not in _ARRAYS}
    meta["attacks"] = list(meta["attacks"])
    meta["format"] = STATE_FORMAT
    meta["fingerprint"] = fingerprint
    arrays = {k: getattr(state, k) for k in _ARRAYS if getattr(state, k) is not None}
    runfiles.atomic_write(path, lambda fh: np.savez(fh, meta=np.array(json.dumps(meta)),
                                                    **arrays), "the AutoAttack state")


def _read_state(path) -> tuple[AutoAttackState, str]:
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            if meta.pop("format", None) != STATE_FORMAT:
                raise ValueError
            arrays = {k: (f[k].copy() if k in f.files else None) for k in _ARRAYS}
    except (OSError, ValueError, KeyError, AttributeError, zipfile.BadZipFile):
        raise ValueError(f"{path} is not a robustjax AutoAttack state file (written by "
                         f"`robustjax autoattack --state`); pass another --state path, or "
                         f"delete it to start over") from None
    fp = meta.pop("fingerprint", "")
    meta["attacks"] = tuple(meta["attacks"])
    return AutoAttackState(**meta, **arrays), fp


def load_state(path) -> AutoAttackState:
    """Read a state written by ``save_state``."""
    return _read_state(path)[0]


def fingerprint(params, x, y, key) -> str:
    """A short hash of the parameters, the data and the key an evaluation runs on."""
    from robustjax.report.store import params_hash

    h = hashlib.sha256(params_hash(params).encode())
    if jax.dtypes.issubdtype(getattr(key, "dtype", np.uint32), jax.dtypes.prng_key):
        key = jax.random.key_data(key)  # a typed key -> its uint32 words
    for a in (x, y, key):
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def state_bytes(x) -> int:
    """Room the state file needs: two copies (the old file and its replacement) of the
    adversarial images (float32, ``x``'s shape) plus four per-example vectors."""
    n = int(np.shape(x)[0])
    return 2 * (4 * int(np.prod(np.shape(x))) + 17 * n + 64 * 1024)


def robustbench_entry(result: AutoAttackResult, config: AutoAttackConfig, *, name: str,
                      dataset: str) -> dict:
    """A RobustBench-style JSON entry (accuracies in percent as strings, as RobustBench's)."""
    return {
        "name": name,
        "dataset": dataset,
        "threat_model": DISPLAY_NORM[config.norm],
        "norm": config.norm,
        "eps": f"{config.eps:.6g}",
        "version": config.version,
        "n_ex": int(result.robust.shape[0]),
        "clean_acc": f"{100 * result.clean_accuracy:.2f}",
        "autoattack_acc": f"{100 * result.robust_accuracy:.2f}",
        "robust_accuracy_after": {k: f"{100 * v:.2f}" for k, v in result.accuracy_after.items()},
        "broken_by": {name_: int(np.sum(result.broken_by == j + 1))
                      for j, name_ in enumerate(result.attacks)},
        "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
    }


def run_autoattack(model, x, y, config: AutoAttackConfig, *, key=None, state_path=None,
                   name: str = "model", dataset: str = "", log: Optional[Callable] = None
                   ) -> dict:
    """AutoAttack on a ``Model``; resumes from ``state_path`` when it exists and keeps it up
    to date after every batch. Returns the RobustBench-style entry (``robustbench_entry``).

    Raises ``robustjax.runfiles.OutputError`` before any compute when ``state_path``'s folder
    cannot be written or lacks room for the state, and ``ValueError`` when the state file
    belongs to another model, data, key or configuration."""
    key = jax.random.key(0) if key is None else key
    resume, fp = None, ""
    if state_path is not None:
        state_path = pathlib.Path(state_path)
        runfiles.preflight(state_path.parent, state_bytes(x), "the AutoAttack state")
        runfiles.remove_stale_temporaries(state_path.parent)  # a kill mid-write left one
        fp = fingerprint(model.params, x, y, key)
    if state_path is not None and state_path.exists():
        resume, saved_fp = _read_state(state_path)
        if saved_fp and saved_fp != fp:
            raise ValueError(f"{state_path} holds the state of another evaluation (another "
                             f"model, data, examples or seed: fingerprint {saved_fp or 'none'}"
                             f", this run {fp}); pass another --state path, or delete it to "
                             f"start over")
        if log:
            log(_resume_line(state_path, resume))
    checkpoint = (lambda s: save_state(state_path, s, fp)) if state_path is not None else None
    result = autoattack(model.apply_fn, model.params, x, y, key, config, log=log,
                        checkpoint=checkpoint, resume=resume)
    return robustbench_entry(result, config, name=name, dataset=dataset)


def _resume_line(path, state: AutoAttackState) -> str:
    m = len(state.attacks)
    if state.current >= m:
        where = "every attack had finished"
    else:
        where = (f"attack {state.current + 1} of {m} ({state.attacks[state.current]}), "
                 f"{state.batches_done} batch(es) of it done")
    broken = int(np.sum(state.broken_by > 0))
    return (f"resuming from {path}: {where}; {broken} of {state.n} examples broken so far "
            f"(restored state)")


def write_entry(path, entry: dict) -> pathlib.Path:
    """Write the RobustBench-style entry as JSON, atomically."""
    return runfiles.atomic_write_text(path, json.dumps(entry, indent=2), "the AutoAttack entry")
