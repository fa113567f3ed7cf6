"""Data-parallel and multi-host placement on JAX's own runtime (jax.sharding, jax.distributed).

A robustness evaluation is embarrassingly parallel over examples: every attack, corruption,
certifier and metric computes row ``i`` of its output from row ``i`` of its input (and the
shared parameters). This module holds the few pieces that turn that into device and host
parallelism without a scheduler of its own:

* ``data_mesh()``: a one-axis ``jax.sharding.Mesh`` named ``"batch"`` over all devices
  (``jax.devices()``: every process's devices under ``jax.distributed``) or the local ones.
* ``batch_sharding(mesh)`` / ``replicated_sharding(mesh)``: ``NamedSharding(mesh, P("batch"))``
  for images and labels, ``NamedSharding(mesh, P())`` for parameters and keys.
* ``pad_batch`` / ``unpad``: a batch that does not divide the device count is padded by
  repeating its last example (valid pixels, valid labels) and the padding is cut off the result;
  nothing is ever dropped. ``jax.random`` draws on JAX's partitionable threefry
  (``jax_threefry_partitionable``, the default since JAX 0.5), whose value at index ``i`` of a
  ``[b, ...]`` draw does not depend on ``b`` beyond ``i`` nor on the sharding, so padding and
  sharding leave the first ``b`` rows' random numbers, and hence the results, unchanged.
* ``use_mesh(mesh)`` / ``current_mesh()``: the mesh the entry points (``robustjax.entry``) shard
  over; by default all local devices, ``use_mesh(None)`` for none. With one device (or none)
  a call runs exactly as it always did. ``place`` / ``unplace`` / ``sharded_model`` are what
  the entry points do with it: pad and place the batch, run the model per shard
  (``jax.shard_map``), cut the padding off.
* ``process_slice(n)`` / ``process_rows``: the deterministic contiguous share of an ``n``-example
  dataset that this process (``jax.process_index()`` of ``jax.process_count()``) reads and
  computes under ``jax.distributed``; shares differ in size by at most one and cover ``[0, n)``.
* ``global_batch`` / ``local_rows``: a process-local batch to a global ``jax.Array`` over the
  mesh (``jax.make_array_from_process_local_data``) and back.
* On a mesh over several processes, an entry point called with host arrays (the same global
  batch in every process, JAX's convention) puts only this process's rows on its devices and
  returns the whole result as numpy in every process (``to_host``): code written for one
  process runs unchanged in each (the multi-host report does exactly that).
* ``allgather_rows`` / ``allgather_json`` / ``check_same_run``: what the multi-host entry points
  (AutoAttack, the ablation runner) exchange between processes: per-example outcomes, finished
  records, and a hash of each process's configuration compared before any compute.

Example::

    mesh = parallel.data_mesh()                     # all devices, axis "batch"
    with parallel.use_mesh(mesh):
        result = attacks.pgd(apply_fn, params, x, y, key, cfg)   # x, y sharded over "batch"
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH = "batch"

_state = threading.local()


# --------------------------------------------------------------------------------- meshes


def data_mesh(devices: Optional[Sequence[Any]] = None, *, axis: str = BATCH,
              local: bool = False) -> Mesh:
    """A one-axis mesh over ``devices`` (default: ``jax.devices()``, every process's devices;
    ``local=True``: ``jax.local_devices()``, this process's only) with axis name ``axis``."""
    if devices is None:
        devices = jax.local_devices() if local else jax.devices()
    devices = list(devices)
    if not devices:
        raise ValueError("data_mesh: expected at least one device, received an empty list")
    return Mesh(np.array(devices, dtype=object), (axis,))


def _check_axis(mesh: Mesh, axis: str) -> None:
    if axis not in mesh.axis_names:
        raise ValueError(
            f"mesh axis {axis!r} does not exist: the mesh has axes {tuple(mesh.axis_names)} "
            f"(shape {dict(mesh.shape)}); build one with robustjax.parallel.data_mesh() or pass "
            f"axis= one of the mesh's axis names")


def batch_sharding(mesh: Mesh, axis: str = BATCH) -> NamedSharding:
    """``NamedSharding(mesh, P(axis))``: the leading (batch) dimension split over ``axis``."""
    _check_axis(mesh, axis)
    return NamedSharding(mesh, PartitionSpec(axis))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P())``: a full copy on every device (parameters, keys, configs)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_size(mesh: Mesh, axis: str = BATCH) -> int:
    """How many shards the batch axis has (the multiple a batch is padded to)."""
    _check_axis(mesh, axis)
    return int(mesh.shape[axis])


# ------------------------------------------------------------------------- current mesh


_UNSET = object()


@functools.lru_cache(maxsize=None)
def _local_default() -> Optional[Tuple[Mesh, str]]:
    if os.environ.get("ROBUSTJAX_DATA_PARALLEL", "1").strip().lower() in ("0", "false", "off"):
        return None
    devices = jax.local_devices()
    return (data_mesh(devices), BATCH) if len(devices) > 1 else None


def current_mesh() -> Optional[Tuple[Mesh, str]]:
    """``(mesh, axis)`` the entry points shard over now: the innermost ``use_mesh`` block's, or
    by default ``data_mesh(local=True)`` (all of this process's devices) when there are several
    (``ROBUSTJAX_DATA_PARALLEL=0`` switches the default off); None for one device or inside
    ``use_mesh(None)``."""
    entry = getattr(_state, "mesh", _UNSET)
    return _local_default() if entry is _UNSET else entry


@contextlib.contextmanager
def use_mesh(mesh: Optional[Mesh], *, axis: str = BATCH):
    """Within the block, robustjax's entry points shard their batch over ``mesh``'s ``axis``;
    ``use_mesh(None)`` switches sharding off (everything on the default device, as on one
    device). Without any block the default is all local devices. A mesh of one device is the
    same as none: the one-device path runs unchanged."""
    previous = getattr(_state, "mesh", _UNSET)
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"use_mesh: expected a jax.sharding.Mesh or None, received "
                            f"{type(mesh).__name__}; build one with robustjax.parallel.data_mesh()")
        _check_axis(mesh, axis)
    _state.mesh = None if mesh is None else (mesh, axis)
    try:
        yield mesh
    finally:
        _state.mesh = previous


def active_mesh() -> Optional[Tuple[Mesh, str]]:
    """The current ``(mesh, axis)`` when it has more than one shard on its batch axis, else
    None: the single test the entry points make before doing anything parallel."""
    entry = current_mesh()
    if entry is None:
        return None
    mesh, axis = entry
    return entry if mesh.shape[axis] > 1 else None


# ------------------------------------------------------------------------ pad and unpad


def padded_size(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``n``."""
    if multiple < 1:
        raise ValueError(f"padded_size: expected a multiple >= 1, received {multiple}")
    return -(-int(n) // multiple) * multiple


def pad_batch(tree, multiple: int, *, size: Optional[int] = None):
    """Pad every array leaf of ``tree`` along axis 0 to a multiple of ``multiple`` by repeating
    its last row; returns ``(padded_tree, n)`` with ``n`` the original batch size. Leaves whose
    leading dimension is not the batch size (scalars, keys, parameters) must not be passed.

    ``size``: the batch size to expect (default: the first leaf's leading dimension)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return tree, 0
    n = int(np.shape(leaves[0])[0]) if size is None else int(size)
    for leaf in leaves:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != n:
            raise ValueError(
                f"pad_batch: expected every array to have leading (batch) dimension {n}, "
                f"received one of shape {np.shape(leaf)}; pass only per-example arrays")
    if n == 0:
        raise ValueError("pad_batch: expected a non-empty batch, received 0 examples")
    target = padded_size(n, multiple)
    if target == n:
        return tree, n

    def pad(leaf):
        xp = np if isinstance(leaf, np.ndarray) else jnp
        tail = xp.repeat(leaf[n - 1:n], target - n, axis=0)
        return xp.concatenate([leaf, tail], axis=0)

    return jax.tree_util.tree_map(pad, tree), n


def unpad(tree, n: int, *, size: Optional[int] = None):
    """Cut every leaf of ``tree`` whose leading dimension is ``size`` (the padded batch size;
    default: any leaf with rank >= 1 and at least ``n`` rows) back to its first ``n`` rows.
    Scalars and leaves of another leading size (a step count, a per-class table) pass as is."""

    def cut(leaf):
        shape = np.shape(leaf)
        if len(shape) == 0:
            return leaf
        if size is not None and shape[0] != size:
            return leaf
        if size is None and shape[0] < n:
            return leaf
        return leaf[:n] if shape[0] != n else leaf

    return jax.tree_util.tree_map(cut, tree)


# ---------------------------------------------------------------------------- placement


def shard_batch(tree, mesh: Mesh, axis: str = BATCH):
    """Pad ``tree``'s per-example leaves to a multiple of the batch shards and place them on
    ``batch_sharding(mesh, axis)``; returns ``(sharded_tree, n)``. Single-process only (under
    ``jax.distributed`` every process must pass the same global values; use ``global_batch``
    for process-local data)."""
    padded, n = pad_batch(tree, batch_size(mesh, axis))
    return jax.device_put(padded, batch_sharding(mesh, axis)), n


def replicate(tree, mesh: Mesh):
    """Place every leaf of ``tree`` on every device of ``mesh`` (``replicated_sharding``)."""
    return jax.device_put(tree, replicated_sharding(mesh))


def _same_batch(leaf, n: int) -> bool:
    shape = np.shape(leaf)
    return len(shape) > 0 and shape[0] == n


def place(per_example, replicated, mesh: Mesh, axis: str = BATCH):
    """What an entry point does before running on ``mesh``: pad the per-example tree (its
    array leaves with the batch as leading dimension; other leaves, such as None, pass) to a
    multiple of the batch shards, put it on ``batch_sharding``, and put ``replicated``
    (parameters, keys) on every device. Returns ``(per_example, replicated, n, padded)``.

    Arrays that already live on the mesh (``global_batch`` under ``jax.distributed``) are used
    as they are. On a mesh spanning several processes, host values (numpy, or arrays of one
    process) are the *global* batch, the same on every process (JAX's own convention for
    ``jax.device_put``, as in a job where every process runs the same program on the same
    data): each process puts only its devices' rows, so each computes its share."""
    leaves = [a for a in jax.tree_util.tree_leaves(per_example) if np.ndim(a) > 0]
    n = int(np.shape(leaves[0])[0])
    sharding = batch_sharding(mesh, axis)
    if not all(_same_batch(a, n) for a in leaves):
        raise ValueError(f"expected every per-example array to have {n} rows, received shapes "
                         f"{[np.shape(a) for a in leaves]}")
    on_mesh = [isinstance(a, jax.Array) and not a.is_fully_addressable for a in leaves]
    if mesh.is_multi_process and any(on_mesh) and not all(
            isinstance(a, jax.Array) and a.sharding == sharding for a in leaves):
        raise ValueError(
            "the mesh spans several processes: pass either global arrays built with "
            "robustjax.parallel.global_batch(local_rows, mesh) for every per-example input, or "
            "host values (the same global batch on every process) for all of them; received a "
            "mix")
    multiple = batch_size(mesh, axis)
    target = padded_size(n, multiple)
    if target != n:
        if any(on_mesh):
            raise ValueError(f"a global batch of {n} does not divide the {multiple} shards of "
                             f"axis {axis!r}: pad each process's rows with pad_batch first")
        per_example = jax.tree_util.tree_map(
            lambda a: pad_batch(a, multiple)[0] if _same_batch(a, n) else a, per_example)
    per_example = jax.tree_util.tree_map(
        lambda a: _put(a, sharding) if _same_batch(a, target) else a, per_example)
    everywhere = replicated_sharding(mesh)
    replicated = jax.tree_util.tree_map(lambda a: _put(a, everywhere), replicated)
    return per_example, replicated, n, target


def _put(a, sharding: NamedSharding):
    """``jax.device_put(a, sharding)``; typed PRNG keys go through their key data, which
    ``device_put`` to a multi-process sharding needs."""
    if (isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
            and sharding.mesh.is_multi_process):
        data = jax.device_put(jax.random.key_data(a), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
    return jax.device_put(a, sharding)


def unplace(tree, n: int, padded: int):
    """The result of a call placed with ``place``: leaves with ``padded`` rows cut to ``n``.
    On a mesh spanning several processes the leaves come back as host (numpy) arrays, whole,
    on every process (``to_host``): the caller's code after the call runs unchanged."""
    tree = to_host(tree)
    if padded == n:
        return tree
    return jax.tree_util.tree_map(lambda a: a[:n] if _same_batch(a, padded) else a, tree)


def to_host(tree):
    """Every leaf that is a ``jax.Array`` spread over several processes' devices as a numpy
    array, whole, on every process (replicated leaves: this process's copy; sharded leaves:
    ``multihost_utils.process_allgather``, a collective every process must reach). Other
    leaves pass unchanged."""
    spread = [isinstance(a, jax.Array) and not a.is_fully_addressable
              for a in jax.tree_util.tree_leaves(tree)]
    if not any(spread):
        return tree
    from jax.experimental import multihost_utils

    def host(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return a
        if a.sharding.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree_util.tree_map(host, tree)


@functools.lru_cache(maxsize=256)
def sharded_model(apply_fn, mesh: Mesh, axis: str = BATCH):
    """``apply_fn(params, x)`` run data-parallel: ``jax.shard_map`` gives each device its rows
    of ``x`` and all of ``params``, and the logits come back sharded the same way. Exact for a
    per-example model (inference BatchNorm, no cross-example op), and it lets custom calls that
    XLA cannot partition (robustjax's oneDNN convolutions) run on each device's rows instead of
    on the gathered batch. A batch that does not divide the shards is run as given (XLA
    partitions it as it can). Cached per (apply_fn, mesh, axis): ``jit``'s cache stays hot."""
    n = int(mesh.shape[axis])

    def apply(params, x, *args, **kwargs):
        if np.ndim(x) == 0 or x.shape[0] % n or args or kwargs:
            return apply_fn(params, x, *args, **kwargs)
        run = jax.shard_map(apply_fn, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(axis)),
                            out_specs=PartitionSpec(axis), check_vma=False)
        return run(params, x)

    apply._robustjax_accelerated = getattr(apply_fn, "_robustjax_accelerated", False)
    apply.__wrapped__ = apply_fn
    return apply


# --------------------------------------------------------------------------- multi-host


def process_slice(n: int, *, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> slice:
    """This process's deterministic contiguous share of ``n`` examples: process ``p`` of ``P``
    gets rows ``[p*n//P + min(p, n%P) ...)`` — the first ``n % P`` processes one more row than
    the rest. The shares are disjoint, ordered by process index and cover ``[0, n)``, so a
    concatenation of the per-process results in process order is the one-process result."""
    p = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if count < 1 or not 0 <= p < count:
        raise ValueError(f"process_slice: expected 0 <= process_index < process_count, "
                         f"received process_index={p}, process_count={count}")
    base, extra = divmod(int(n), count)
    start = p * base + min(p, extra)
    return slice(start, start + base + (1 if p < extra else 0))


def process_rows(tree, *, process_index: Optional[int] = None,
                 process_count: Optional[int] = None):
    """The rows of every per-example leaf of ``tree`` (a dataset ``(x, y)``) that this process
    reads: ``leaf[process_slice(n)]``."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return tree
    n = int(np.shape(leaves[0])[0])
    s = process_slice(n, process_index=process_index, process_count=process_count)
    return jax.tree_util.tree_map(lambda a: a[s], tree)


def global_batch(local_tree, mesh: Mesh, axis: str = BATCH):
    """A global ``jax.Array`` over ``batch_sharding(mesh, axis)`` from each process's own rows
    (``jax.make_array_from_process_local_data``). Every process must pass the same number of
    rows and that number must divide evenly over its local devices (pad with ``pad_batch``
    first). In one process this is ``jax.device_put`` on the batch sharding."""
    sharding = batch_sharding(mesh, axis)
    if jax.process_count() == 1:
        return jax.device_put(local_tree, sharding)
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local_tree)


def local_rows(tree):
    """Every leaf of ``tree`` (global arrays sharded over the batch) as a numpy array of the
    rows held by this process's devices, in order — the inverse of ``global_batch``. A leaf
    fully available here (replicated, or one process) comes back whole."""

    def rows(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(a)
        shards = sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)
        seen, parts = set(), []
        for s in shards:
            start = s.index[0].start or 0
            if start in seen:  # replicas of the same rows on several local devices
                continue
            seen.add(start)
            parts.append(np.asarray(s.data))
        return np.concatenate(parts, axis=0)

    return jax.tree_util.tree_map(rows, tree)


def is_coordinator() -> bool:
    """True in process 0, the one that writes merged reports."""
    return jax.process_index() == 0


def allgather_rows(local: np.ndarray, rows: int) -> np.ndarray:
    """Every process's ``local`` array (its leading axis padded with zeros to ``rows``),
    stacked in process order: ``[process_count, rows, ...]``. A collective: every process
    must call it, with the same ``rows`` and trailing shape."""
    from jax.experimental import multihost_utils

    local = np.asarray(local)
    if len(local) > rows:
        raise ValueError(f"allgather_rows: {len(local)} local rows do not fit in rows={rows}")
    pad = np.zeros((rows - len(local),) + local.shape[1:], local.dtype)
    return np.asarray(multihost_utils.process_allgather(np.concatenate([local, pad])))


def allgather_json(obj) -> list:
    """``obj`` (JSON-able) from every process, in process order (one process: ``[obj]``).
    A collective: every process must call it."""
    import json

    blob = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    if jax.process_count() == 1:
        return [json.loads(blob.tobytes())]
    sizes = allgather_rows(np.array([len(blob)], np.int64), 1)[:, 0]
    blobs = allgather_rows(blob, int(sizes.max()))
    return [json.loads(blobs[p, :sizes[p]].tobytes()) for p in range(len(sizes))]


def check_same_run(description: dict) -> None:
    """Fail fast, before any compute, when the processes of a multi-host job were started with
    different configurations, data or models: every process hashes ``description`` (JSON-able)
    and the hashes are compared across processes. A collective (also a barrier); one process:
    nothing to compare."""
    if jax.process_count() == 1:
        return
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode())
    mine = np.frombuffer(digest.digest(), np.uint8)
    hashes = allgather_rows(mine[None], 1)[:, 0]
    differ = [i for i in range(len(hashes)) if not np.array_equal(hashes[i], hashes[0])]
    if differ:
        raise ValueError(f"the processes of this multi-host run were started with different "
                         f"configurations: process(es) {differ} differ from process 0 "
                         f"(hashes {[h.tobytes().hex()[:16] for h in hashes]}); start every "
                         f"process with the same command, model, data and seed")
