"""Shared pieces of the decision-based (label-only) attacks: Boundary and HopSkipJump.

A decision-based attacker sees only the predicted label ``argmax apply_fn(params, x)`` of each
image it submits (Brendel et al. 2018). Everything here goes through :func:`label_oracle`, so
an ``apply_fn`` that returns one-hot labels instead of logits gives the same attack, bit for
bit.

Queries are counted per example: an image scored on behalf of an example that is still
running counts 1 for it; an example that is done (or whose budget is spent) rides along in the
batch, but its images are neither counted nor used. With one example per batch the count is
exactly the number of images the model scored.

The result (:class:`DecisionResult`) extends ``AttackResult`` with a trace of the perturbation
norm against the queries used.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from robustjax.attacks._core import lp_norm

Array = jax.Array
# Blend binary search of the start point: stop when high - low <= 0.001 (HopSkipJump's code).
INIT_SEARCH_TOL = 1e-3


class DecisionResult(NamedTuple):
    """``AttackResult``'s fields plus the norm-vs-queries trace of a decision-based attack.

    Attributes:
      x_adv: [b, H, W, C] float32 in [0, 1]; adversarial where ``is_adv`` (else ``x``).
      success: [b] bool; adversarial, and within ``eps`` when the config has one.
      loss: [b] float32 ``-norm`` (the attack minimises the norm; ``-inf`` where no adversarial
        point was found), so larger is more adversarial as for every robustjax attack.
      norm: [b] float32 norm of ``x_adv - x`` in the attack's norm (0 where not adversarial).
      queries: [b] int32 labels requested per example (exact; never above ``max_queries``).
      trace_queries: [b, T] int32 queries used at each trace point.
      trace_norm: [b, T] float32 norm of the current adversarial point there (``inf`` before
        one was found).
      is_adv: [b] bool; an adversarial point was found (regardless of ``eps``).
    """

    x_adv: Array
    success: Array
    loss: Array
    norm: Array
    queries: Array
    trace_queries: Array
    trace_norm: Array
    is_adv: Array


def label_oracle(apply_fn, params, y: Array, targeted: bool):
    """``(x_batch [b * m, ...], m) -> [b * m] bool`` adversarial decisions from labels only.

    Every query of a decision-based attack goes through this: the model's output is reduced to
    its argmax at once. ``m`` images per example are laid out example-major.
    """

    def is_adv(xb: Array, m: int = 1) -> Array:
        labels = jnp.argmax(apply_fn(params, jnp.clip(xb, 0.0, 1.0)), axis=-1)
        yy = jnp.repeat(y, m) if m > 1 else y
        return (labels == yy) if targeted else (labels != yy)

    return is_adv


def bcast(v: Array, x: Array) -> Array:
    """[b] -> [b, 1, 1, 1] to broadcast against images [b, H, W, C]."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def distance(a: Array, b: Array, norm: str) -> Array:
    return lp_norm(a - b, norm).astype(jnp.float32)


def fits(queries: Array, cost: int, max_queries: Optional[int]) -> Array:
    """[b] bool: an example with ``queries`` spent may still spend ``cost`` more."""
    if max_queries is None:
        return jnp.ones(queries.shape, bool)
    return queries + cost <= max_queries


def find_start(is_adv, x: Array, key: Array, queries: Array, need: Array, trials: int,
               max_queries: Optional[int]):
    """Uniform noise until adversarial, then a blend binary search towards ``x``.

    As HopSkipJump's reference ``initialize`` (and Brendel et al. 2018, Sec. 3.1: a sample of
    the maximum-entropy distribution that is adversarial): up to ``trials`` uniform images per
    example, one query each, then bisection on ``(1 - a) x + a noise`` down to a width of
    ``INIT_SEARCH_TOL`` (10 queries). ``queries`` [b] counts what was spent before; only the
    examples where ``need`` [b] bool is set search (and spend).

    Returns ``(x_start [b, ...], found [b] bool, queries [b])``; ``x_start`` is adversarial
    where ``found`` (else ``x``).
    """
    b = x.shape[0]

    def cond(st):
        i, _, found, q = st
        return (i < trials) & jnp.any(~found & fits(q, 1, max_queries))

    def body(st):
        i, noise, found, q = st
        ask = ~found & fits(q, 1, max_queries)
        cand = jax.random.uniform(jax.random.fold_in(key, i), x.shape, x.dtype)
        ok = is_adv(cand) & ask
        noise = jnp.where(bcast(ok, x), cand, noise)
        return i + 1, noise, found | ok, q + ask.astype(jnp.int32)

    st = (jnp.int32(0), x, ~need, queries)
    _, noise, found, queries = jax.lax.while_loop(cond, body, st)
    found = found & need

    steps = int(math.ceil(math.log2(1.0 / INIT_SEARCH_TOL)))

    def bisect(_, st):
        lo, hi, q = st
        ask = found & fits(q, 1, max_queries)
        mid = (lo + hi) / 2.0
        ok = is_adv((1.0 - bcast(mid, x)) * x + bcast(mid, x) * noise)
        hi = jnp.where(ask & ok, mid, hi)
        lo = jnp.where(ask & ~ok, mid, lo)
        return lo, hi, q + ask.astype(jnp.int32)

    lo, hi = jnp.zeros((b,), x.dtype), jnp.ones((b,), x.dtype)
    _, hi, queries = jax.lax.fori_loop(0, steps, bisect, (lo, hi, queries))
    x_start = (1.0 - bcast(hi, x)) * x + bcast(hi, x) * noise
    return jnp.where(bcast(found, x), x_start, x), found, queries


def check_start(x: Array, starting_points: Optional[Array], targeted: bool = False,
                name: str = "decision-based attack") -> None:
    """``starting_points`` (None or like ``x``) fit ``x``; a targeted attack needs them."""
    if starting_points is not None and starting_points.shape != x.shape:
        raise ValueError(f"starting_points must have the shape of x {x.shape}, got "
                         f"{starting_points.shape}")
    if targeted and starting_points is None:
        raise ValueError(f"a targeted {name} needs starting_points (images of the target "
                         "classes): uniform noise is almost never of a given class")


def start(is_adv, x: Array, key: Array, starting_points: Optional[Array], trials: int,
          max_queries: Optional[int]):
    """The adversarial start of both attacks (Brendel et al. 2018, Sec. 3.1; HSJ's code).

    One query on ``x`` itself (an already misclassified example is done and keeps ``x``);
    then the given ``starting_points`` (one query each, kept where adversarial); then, where
    neither is, :func:`find_start`'s uniform noise and blend bisection.

    Returns ``(x_start [b, ...], found [b] bool, clean_adv [b] bool, queries [b] int32)``:
    ``x_start`` is adversarial where ``found`` (else ``x``); ``clean_adv`` marks the examples
    misclassified from the start.
    """
    q = jnp.ones(x.shape[:1], jnp.int32)
    clean_adv = is_adv(x)
    found, x_start = clean_adv, x
    if starting_points is not None:
        sp = jnp.clip(starting_points.astype(x.dtype), 0.0, 1.0)
        ask = ~found & fits(q, 1, max_queries)
        ok = is_adv(sp) & ask
        q = q + ask.astype(jnp.int32)
        x_start, found = jnp.where(bcast(ok, x), sp, x_start), found | ok
    x_noise, ok, q = find_start(is_adv, x, key, q, ~found, trials, max_queries)
    x_start = jnp.where(bcast(ok, x), x_noise, x_start)
    return x_start, found | ok, clean_adv, q


def result(x: Array, x_adv: Array, found: Array, queries: Array, norm: str,
           eps: Optional[float], trace_q: Array, trace_n: Array) -> DecisionResult:
    x_adv = jnp.where(bcast(found, x), x_adv, x)
    n = jnp.where(found, distance(x_adv, x, norm), 0.0)
    success = found if eps is None else found & (n <= eps)
    return DecisionResult(x_adv=x_adv, success=success,
                          loss=jnp.where(found, -n, -jnp.inf).astype(jnp.float32), norm=n,
                          queries=queries, trace_queries=trace_q, trace_norm=trace_n,
                          is_adv=found)
