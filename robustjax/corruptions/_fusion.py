"""How the corruptions steer XLA's fusion and loop structure (mostly for XLA:CPU).

``materialize`` writes a value to memory before its consumers read it, so that XLA does not
recompute an expensive producer once per filter tap; ``map_images`` picks ``lax.map`` or
``vmap`` over the batch by backend. Both are identities for values, vmap and derivatives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _fence(v):
    # The predicate is always true ((w | 1) != 0) but not provable, and the branches differ,
    # so XLA keeps the conditional and with it a buffer between producer and consumers.
    first = v.reshape(-1)[0]
    if first.dtype.itemsize == 4:
        word = jax.lax.bitcast_convert_type(first, jnp.uint32)
    else:
        word = first.astype(jnp.uint32)
    return jax.lax.cond((word | jnp.uint32(1)) != 0, lambda a: a, jnp.zeros_like, v)


@jax.custom_batching.custom_vmap
def _fence_batched(v):
    return _fence(v)


@_fence_batched.def_vmap
def _fence_vmap(axis_size, in_batched, v):
    del axis_size
    return _fence_batched(v), in_batched[0]  # a vmapped cond would become a select


@jax.custom_jvp
def materialize(v: Array) -> Array:
    """``v``, written to memory before its consumers read it.

    XLA fuses an element-wise producer into each consumer, and a filter reads its input at
    every tap, so an expensive producer (a random field, a chain of element-wise maths) is
    recomputed once per tap: 17 times for a 17-tap blur. XLA:CPU removes optimisation barriers
    before fusion; a conditional is kept. Identity for values, vmap and derivatives."""
    return _fence_batched(v)


@materialize.defjvp
def _materialize_jvp(primals, tangents):
    return materialize(primals[0]), tangents[0]


def map_images(fn, *args):
    """``vmap(fn)(*args)`` over the leading (batch) axis; on CPU a ``lax.map`` instead, which
    keeps each image's work in cache and keeps dynamic slices as slices (vmap turns slices at
    per-image offsets into gathers): 2.5-3.5x faster for motion blur on XLA:CPU."""
    if jax.default_backend() == "cpu":
        return jax.lax.map(lambda a: fn(*a), args)
    return jax.vmap(fn)(*args)
