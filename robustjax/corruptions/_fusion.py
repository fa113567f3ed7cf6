"""How the corruptions steer XLA's fusion and loop structure (mostly for XLA:CPU).

``materialize`` writes a value to memory before its consumers read it, so that XLA does not
recompute an expensive producer once per filter tap; ``map_images`` picks ``lax.map`` or
``vmap`` over the batch by backend; ``map_batch`` runs batch-wise code in cache-sized chunks of
images on CPU. All are identities for values, vmap and derivatives.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def _always_true(v):
    """A predicate that is always true, ``(w | 1) != 0`` for ``w`` the first element of ``v``
    as a 32-bit word, but that XLA cannot prove: with branches that differ, it keeps the
    conditional and with it a buffer between producer and consumers."""
    if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
        v = jax.random.key_data(v)
    first = v.reshape(-1)[0]
    if first.dtype.itemsize == 4:
        word = jax.lax.bitcast_convert_type(first, jnp.uint32)
    else:
        word = first.astype(jnp.uint32)
    return (word | jnp.uint32(1)) != 0


def _fence(v):
    return jax.lax.cond(_always_true(v), lambda a: a, jnp.zeros_like, v)


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


def computed(fn, *args):
    """``fn(*args)``, computed straight into its own buffer (like ``materialize(fn(*args))``).

    ``materialize(v)`` keeps ``v``'s producer outside its conditional, and XLA copies the
    operand into the conditional's result: one more pass over the value (a random field of a
    64-image batch: 0.1-0.2 ms/image). Here ``fn`` runs inside the kept branch and writes its
    result in place. The predicate reads the first element of the first argument, so ``args``
    must hold at least one non-empty array (a PRNG key will do). Under ``vmap`` with batched
    arguments the conditional becomes a select (same values, one more pass); derivatives are
    those of ``fn``."""
    leaves = [a for a in jax.tree_util.tree_leaves(args) if getattr(a, "size", 0)]
    if not leaves:
        raise ValueError("computed() needs at least one non-empty array argument")
    zeros = lambda *a: jax.tree_util.tree_map(  # noqa: E731
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *a))
    return jax.lax.cond(_always_true(jnp.asarray(leaves[0])), fn, zeros, *args)


def map_images(fn, *args):
    """``vmap(fn)(*args)`` over the leading (batch) axis; on CPU a ``lax.map`` instead, which
    keeps each image's work in cache and keeps dynamic slices as slices (vmap turns slices at
    per-image offsets into gathers): 2.5-3.5x faster for motion blur on XLA:CPU."""
    if jax.default_backend() == "cpu":
        return jax.lax.map(lambda a: fn(*a), args)
    return jax.vmap(fn)(*args)


# Bytes of one chunk's largest input for ``map_batch``: 4 images of 224 x 224 x 3 float32 (2
# and 8 were slower on a 2-core EPYC with 2 x 1 MiB L2 and 32 MiB L3).
CHUNK_BYTES = 5 * 2**19


def batch_chunk(batch: int, per_image_bytes: int, chunk_bytes: int | None = None) -> int:
    """Images per chunk for ``map_batch``: ``chunk_bytes / per_image_bytes``, rounded down to
    a divisor of ``batch`` (at least 2) when one is within a factor 2 (no remainder to run
    separately)."""
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    ideal = max(1, min(batch, chunk_bytes // max(1, per_image_bytes)))
    for c in range(ideal, max(2, ideal // 2) - 1, -1):  # never down to 1 image per chunk
        if batch % c == 0:
            return c
    return ideal


def map_batch(fn, *args, chunk: int | None = None, image_bytes: int | None = None):
    """``fn(*args)`` for batch-wise ``fn`` (image ``i`` of the output depends only on image
    ``i`` of every argument); on CPU it runs on chunks of a few images with ``lax.map``.

    XLA:CPU is memory-bound on multi-pass image code: a full-batch pass writes and reads every
    intermediate through main memory (a plain copy of a 64 x 224 x 224 x 3 batch costs 0.2
    ms/image on a 2-core VM), while a chunk's intermediates stay in cache: gaussian blur ran
    1.3x, glass blur 1.15x and the defocus FFT 1.9x faster in chunks of 4. Single-pass
    element-wise code got slower (the noises: 1.7x), so it is not chunked. Other backends get
    ``fn(*args)`` unchanged.
    ``chunk`` overrides the size picked by ``batch_chunk``; ``image_bytes`` the per-image
    working set it is picked from (default: the largest per-image argument)."""
    leaves = jax.tree_util.tree_leaves(args)
    b = leaves[0].shape[0]
    if chunk is None:
        if jax.default_backend() != "cpu":
            return fn(*args)
        if image_bytes is None:
            image_bytes = max(math.prod(a.shape[1:]) * a.dtype.itemsize for a in leaves)
        chunk = batch_chunk(b, image_bytes)
    if chunk >= b:
        return fn(*args)
    n = b // chunk
    head = jax.tree_util.tree_map(lambda a: a[: n * chunk].reshape((n, chunk) + a.shape[1:]), args)
    out = jax.lax.map(lambda a: fn(*a), head)
    out = jax.tree_util.tree_map(lambda o: o.reshape((n * chunk,) + o.shape[2:]), out)
    if n * chunk == b:
        return out
    tail = fn(*jax.tree_util.tree_map(lambda a: a[n * chunk:], args))
    return jax.tree_util.tree_map(lambda o, t: jnp.concatenate([o, t]), out, tail)
