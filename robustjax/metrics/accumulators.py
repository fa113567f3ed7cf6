"""Mergeable accumulators: a metric as a small frozen dataclass of sufficient statistics.

The pattern is clu's (``clu/metrics.py``): an accumulator holds only what is needed to compute
the metric later (sums and counts, minima and maxima, "seen" flags), and has

* ``empty()``   the identity of ``merge`` (no examples seen);
* ``merge(o)``  the statistics of the union of two disjoint sets of examples;
* ``compute()`` the metric value(s).

``compute()`` runs in numpy when the statistics are concrete arrays (no XLA compilation for a
few divisions at the end of an evaluation) and in ``jax.numpy`` under ``jit``.

Accumulators are pytrees (``flax.struct.dataclass``): they can be returned from ``jit``-ed
functions, summed over a ``pmap``/``shard_map`` axis, or stacked along a leading axis (one row
per device or batch) and folded with :func:`reduce_stacked`. Merging is exact for sums of
integers (counts) and associative up to float32 rounding for sums of floats.

Example::

    acc = Average.empty()
    for xb, yb in batches:
        acc = acc.merge(Average.from_values(correct(xb, yb)))
    accuracy = acc.compute()
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array


def _xp(*arrays):
    """numpy for concrete arrays, jax.numpy under tracing."""
    return jnp if any(isinstance(a, jax.core.Tracer) for a in arrays) else np


def _mask_or_ones(values: Array, mask: Optional[Array]) -> Array:
    if mask is None:
        return jnp.ones(values.shape[:1], dtype=bool)
    mask = jnp.asarray(mask)
    if mask.shape != values.shape[:1]:
        raise ValueError(
            f"mask must have one entry per example, shape {values.shape[:1]}, got {mask.shape}"
        )
    return mask.astype(bool)


@struct.dataclass
class Average:
    """Mean of per-example values, optionally over a subset (mask) of the examples.

    ``total`` is the sum of the selected values (float32, shape ``[...]``: a scalar for a
    per-example scalar, a vector for per-example vectors such as one value per neuron) and
    ``count`` the number of selected examples (int32 scalar). ``compute()`` is
    ``total / count``, NaN when no example was selected (a mean over nothing is undefined;
    DEEPSEC and AISafety divide by zero there too).
    """

    total: Array
    count: Array

    @classmethod
    def empty(cls) -> "Average":
        return cls(total=jnp.zeros((), jnp.float32), count=jnp.zeros((), jnp.int32))

    @classmethod
    def from_values(cls, values: Array, mask: Optional[Array] = None) -> "Average":
        """``values``: ``[b, ...]`` one value (or vector) per example; ``mask``: bool ``[b]``."""
        values = jnp.asarray(values, jnp.float32)
        if values.ndim == 0:
            raise ValueError("values must have a leading batch axis, got a scalar")
        m = _mask_or_ones(values, mask)
        w = m.reshape(m.shape + (1,) * (values.ndim - 1))
        return cls(
            total=jnp.sum(jnp.where(w, values, 0.0), axis=0),
            count=jnp.sum(m, dtype=jnp.int32),
        )

    def merge(self, other: "Average") -> "Average":
        return type(self)(total=self.total + other.total, count=self.count + other.count)

    def compute(self) -> Array:
        xp = _xp(self.total, self.count)
        total, count = xp.asarray(self.total), xp.asarray(self.count)
        return xp.where(count > 0, total / xp.maximum(count, 1), xp.nan).astype(xp.float32)


@struct.dataclass
class Ratio:
    """``numerator / denominator`` of two sums (e.g. correct-on-corrupted / correct-on-clean).

    Both fields are float32 sums over examples; ``compute()`` is NaN when the denominator is 0.
    """

    numerator: Array
    denominator: Array

    @classmethod
    def empty(cls) -> "Ratio":
        return cls(numerator=jnp.zeros((), jnp.float32), denominator=jnp.zeros((), jnp.float32))

    @classmethod
    def from_values(cls, numerator: Array, denominator: Array) -> "Ratio":
        """Per-example ``numerator`` and ``denominator`` values ``[b, ...]``, summed over b."""
        return cls(
            numerator=jnp.sum(jnp.asarray(numerator, jnp.float32), axis=0),
            denominator=jnp.sum(jnp.asarray(denominator, jnp.float32), axis=0),
        )

    def merge(self, other: "Ratio") -> "Ratio":
        return type(self)(self.numerator + other.numerator, self.denominator + other.denominator)

    def compute(self) -> Array:
        xp = _xp(self.numerator, self.denominator)
        n, d = xp.asarray(self.numerator), xp.asarray(self.denominator)
        return xp.where(d != 0, n / xp.where(d != 0, d, 1.0), xp.nan).astype(xp.float32)


@struct.dataclass
class MinMax:
    """Element-wise minimum and maximum over examples (e.g. a neuron's range on training data).

    ``low``/``high``: float32 ``[...]``; ``empty()`` is (+inf, -inf), the identity of min/max.
    """

    low: Array
    high: Array

    @classmethod
    def empty(cls) -> "MinMax":
        return cls(low=jnp.array(jnp.inf, jnp.float32), high=jnp.array(-jnp.inf, jnp.float32))

    @classmethod
    def from_values(cls, values: Array) -> "MinMax":
        values = jnp.asarray(values, jnp.float32)
        return cls(low=jnp.min(values, axis=0), high=jnp.max(values, axis=0))

    def merge(self, other: "MinMax") -> "MinMax":
        return type(self)(jnp.minimum(self.low, other.low), jnp.maximum(self.high, other.high))

    def compute(self) -> tuple[Array, Array]:
        return self.low, self.high


@struct.dataclass
class AnySeen:
    """Element-wise logical OR over examples ("was this neuron section ever hit?").

    ``seen``: bool ``[...]``; ``empty()`` is a scalar False that broadcasts on merge.
    ``compute()`` is the fraction of True entries.
    """

    seen: Array

    @classmethod
    def empty(cls) -> "AnySeen":
        return cls(seen=jnp.zeros((), bool))

    @classmethod
    def from_values(cls, hits: Array) -> "AnySeen":
        return cls(seen=jnp.any(jnp.asarray(hits, bool), axis=0))

    def merge(self, other: "AnySeen") -> "AnySeen":
        return type(self)(jnp.logical_or(self.seen, other.seen))

    def compute(self) -> Array:
        xp = _xp(self.seen)
        return xp.mean(xp.asarray(self.seen).astype(xp.float32))


def merge_all(accumulators: Sequence[Any]) -> Any:
    """Fold a non-empty sequence of accumulators of one type with ``merge``."""
    if not accumulators:
        raise ValueError("merge_all needs at least one accumulator")
    return functools.reduce(lambda a, b: a.merge(b), accumulators)


def reduce_stacked(stacked: Any) -> Any:
    """Merge accumulators stacked along a leading axis (one row per device or batch).

    E.g. the result of ``jax.lax.all_gather`` or of ``jax.vmap``/``lax.map`` over batches.
    Works for every accumulator (it uses the accumulator's own ``merge``).
    """
    leaves = jax.tree_util.tree_leaves(stacked)
    if not leaves:
        raise ValueError("reduce_stacked got an accumulator without arrays")
    n = leaves[0].shape[0]
    rows = [jax.tree_util.tree_map(lambda a, i=i: a[i], stacked) for i in range(n)]
    return merge_all(rows)


def merge_dicts(a: dict, b: dict) -> dict:
    """Merge two dicts of accumulators (e.g. one entry per layer); keys in only one dict are
    kept as they are, so an empty dict is the identity."""
    out = dict(a)
    for k, v in b.items():
        out[k] = out[k].merge(v) if k in out else v
    return out
