"""AutoAttack evaluations with files: a resumable state file and a RobustBench-style entry.

``robustjax.attacks.autoattack`` computes; this module (like the rest of ``report/``) owns the
files. The state is written after every batch atomically (a temporary file, then
``os.replace``), so an interrupted evaluation resumes from its last finished batch with the
same result as an uninterrupted one.

Example::

    entry = run_autoattack(model, x, y, AutoAttackConfig(eps=0.3), state_path="aa.state.npz",
                           log=print)
    json.dump(entry, open("entry.json", "w"))
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
from typing import Callable, Optional

import jax
import numpy as np

from robustjax.attacks.autoattack import (
    DISPLAY_NORM,
    AutoAttackConfig,
    AutoAttackResult,
    AutoAttackState,
    autoattack,
)

STATE_FORMAT = "robustjax-autoattack-state-v1"
_ARRAYS = ("robust", "broken_by", "x_adv", "todo")


def save_state(path, state: AutoAttackState) -> None:
    """Write ``state`` to ``path`` (npz) atomically: a temporary file, then ``os.replace``."""
    path = pathlib.Path(path)
    meta = {k: v for k, v in dataclasses.asdict(state).items() if k not in _ARRAYS}
    meta["attacks"] = list(meta["attacks"])
    meta["format"] = STATE_FORMAT
    arrays = {k: getattr(state, k) for k in _ARRAYS if getattr(state, k) is not None}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_state(path) -> AutoAttackState:
    """Read a state written by ``save_state``."""
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        if meta.pop("format", None) != STATE_FORMAT:
            raise ValueError(f"{path} is not a robustjax AutoAttack state file")
        arrays = {k: (f[k].copy() if k in f.files else None) for k in _ARRAYS}
    meta["attacks"] = tuple(meta["attacks"])
    return AutoAttackState(**meta, **arrays)


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
    to date after every batch. Returns the RobustBench-style entry (``robustbench_entry``)."""
    key = jax.random.key(0) if key is None else key
    resume = None
    if state_path is not None and pathlib.Path(state_path).exists():
        resume = load_state(state_path)
        if log:
            log(f"restored state from {state_path}")
    checkpoint = (lambda s: save_state(state_path, s)) if state_path is not None else None
    result = autoattack(model.apply_fn, model.params, x, y, key, config, log=log,
                        checkpoint=checkpoint, resume=resume)
    return robustbench_entry(result, config, name=name, dataset=dataset)
