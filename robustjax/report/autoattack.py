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


def process_state_path(state_path, process_index: int, process_count: int) -> pathlib.Path:
    """Where process ``process_index`` of ``process_count`` keeps its share's state:
    ``aa.state.npz`` -> ``aa.state.process1-of-2.npz`` (one file per host: each resumes its
    own share)."""
    p = pathlib.Path(state_path)
    return p.with_name(f"{p.stem}.process{process_index}-of-{process_count}{p.suffix}")


def run_autoattack_sharded(model, x, y, config: AutoAttackConfig, *, key=None, state_path=None,
                           name: str = "model", dataset: str = "",
                           log: Optional[Callable] = None) -> dict:
    """AutoAttack split over the processes of a ``jax.distributed`` job (one process: the
    same computation, as the reference to compare with).

    ``x``, ``y`` are the whole dataset (e.g. memory-mapped); process ``p`` reads only its
    share, whole batches of ``config.batch_size`` (``robustjax.parallel.process_slice`` over
    the batches), attacks it on its own devices, and keeps its own state file
    (``process_state_path``): an interrupted job resumes every share where it stopped. The
    per-example outcomes are gathered (``multihost_utils.process_allgather``) and every process
    returns the merged RobustBench-style entry; process 0 writes it (``parallel.is_coordinator``).
    ``config.schedule`` must be ``"mask"``: fixed batches keyed by their place in the dataset,
    so the numbers equal the one-process run's exactly. Mixed configurations across processes
    fail at start (``parallel.check_same_run``)."""
    from robustjax import parallel
    from robustjax.report.store import params_hash

    if config.schedule != "mask":
        raise ValueError(f"a multi-host AutoAttack needs schedule='mask' (fixed batches, each "
                         f"keyed by its place in the dataset, so every process's share gives "
                         f"the one-process numbers); received schedule={config.schedule!r}")
    key = jax.random.key(0) if key is None else key
    n, bs = int(np.shape(x)[0]), config.batch_size
    count, index = jax.process_count(), jax.process_index()
    key_words = np.asarray(jax.random.key_data(key)) if jax.dtypes.issubdtype(
        key.dtype, jax.dtypes.prng_key) else np.asarray(key)
    parallel.check_same_run({"config": dataclasses.asdict(config), "n": n,
                             "shape": list(np.shape(x)), "params": params_hash(model.params),
                             "key": key_words.tolist(), "name": name, "dataset": dataset,
                             "processes": count})
    batches = parallel.process_slice(-(-n // bs))
    rows = slice(batches.start * bs, min(batches.stop * bs, n))
    xs, ys = np.asarray(x[rows]), np.asarray(y[rows])
    if len(xs) == 0:
        raise ValueError(f"{n} examples in batches of {bs} leave process {index} of {count} "
                         f"nothing to do: use fewer processes or a smaller --batch-size")
    share_state = None if state_path is None else process_state_path(state_path, index, count)
    resume, fp = None, ""
    if share_state is not None:
        runfiles.preflight(share_state.parent, state_bytes(xs), "the AutoAttack state")
        runfiles.remove_stale_temporaries(share_state.parent)
        fp = fingerprint(model.params, xs, ys, key) + f"-rows{rows.start}"
        if share_state.exists():
            resume, saved_fp = _read_state(share_state)
            if saved_fp and saved_fp != fp:
                raise ValueError(f"{share_state} holds the state of another evaluation "
                                 f"(fingerprint {saved_fp}, this share {fp}); delete it to "
                                 f"start over")
            if log:
                log(_resume_line(share_state, resume))
    checkpoint = (lambda s: save_state(share_state, s, fp)) if share_state is not None else None
    local = autoattack(model.apply_fn, model.params, xs, ys, key, config, log=log,
                       checkpoint=checkpoint, resume=resume, batch_offset=batches.start)
    if count > 1:
        most = max(parallel.process_slice(-(-n // bs), process_index=p).stop
                   - parallel.process_slice(-(-n // bs), process_index=p).start
                   for p in range(count)) * bs
        sizes = [min(s.stop * bs, n) - s.start * bs for s in
                 (parallel.process_slice(-(-n // bs), process_index=p) for p in range(count))]
        g = parallel.allgather_rows(np.asarray(local.broken_by), most)
        broken_by = np.concatenate([g[p, :sizes[p]] for p in range(count)])
        ran = np.array([nm in local.accuracy_after for nm in local.attacks], np.int32)
        ran = parallel.allgather_rows(ran[None], 1)[:, 0].max(axis=0)
        secs = np.array([local.seconds.get(k, 0.0) for k in ("clean",) + local.attacks])
        secs = parallel.allgather_rows(secs[None], 1)[:, 0].max(axis=0)
    else:
        broken_by = local.broken_by
        ran = np.array([nm in local.accuracy_after for nm in local.attacks], np.int32)
        secs = np.array([local.seconds.get(k, 0.0) for k in ("clean",) + local.attacks])
    robust = broken_by < 0
    after = {"clean": float(np.mean(broken_by != 0))}
    for j, nm in enumerate(local.attacks):
        if ran[j]:
            after[nm] = float(np.mean((broken_by < 0) | (broken_by > j + 1)))
    merged = AutoAttackResult(  # adversarial images stay with their process (not gathered)
        x_adv=local.x_adv if count == 1 else None, robust=robust, broken_by=broken_by,
        attacks=local.attacks,
        clean_accuracy=after["clean"], robust_accuracy=float(robust.mean()),
        accuracy_after=after,
        seconds={k: float(v) for k, v in zip(("clean",) + local.attacks, secs)})
    entry = robustbench_entry(merged, config, name=name, dataset=dataset)
    entry["processes"] = count
    return entry


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
