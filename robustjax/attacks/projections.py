"""Norms of perturbations and projections onto the threat model (the eps ball of a norm and
the [0, 1] box), per example: eps is a scalar or ``[b]``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
NORMS = ("linf", "l2", "l1")


def _per_example(v: Array, x: Array) -> Array:
    """Broadcast a scalar or [b] value against [b, ...] ``x``."""
    v = jnp.asarray(v, dtype=x.dtype)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def lp_norm(delta: Array, norm: str) -> Array:
    """Per-example norm [b] of ``delta`` [b, ...]."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "linf":
        return jnp.max(jnp.abs(flat), axis=-1)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(flat * flat, axis=-1))
    if norm == "l1":
        return jnp.sum(jnp.abs(flat), axis=-1)
    raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")


def clip_to_box(x: Array, lo: float = 0.0, hi: float = 1.0) -> Array:
    return jnp.clip(x, lo, hi)


def project_linf(delta: Array, eps) -> Array:
    """Euclidean projection of ``delta`` [b, ...] onto the Linf ball of radius eps (scalar/[b])."""
    eps = _per_example(eps, delta)
    return jnp.clip(delta, -eps, eps)


def project_l2(delta: Array, eps) -> Array:
    """Euclidean projection onto the L2 ball: ``delta * min(1, eps / ||delta||_2)``."""
    n = _per_example(lp_norm(delta, "l2"), delta)
    eps = _per_example(eps, delta)
    return delta * jnp.minimum(1.0, eps / jnp.maximum(n, 1e-12))


def project_l1(delta: Array, eps) -> Array:
    """Exact Euclidean projection onto the L1 ball (Duchi et al. 2008, sorting algorithm)."""
    b = delta.shape[0]
    v = delta.reshape(b, -1)
    eps = jnp.broadcast_to(jnp.asarray(eps, v.dtype), (b,))
    u = jnp.abs(v)
    mu = -jnp.sort(-u, axis=-1)  # decreasing
    css = jnp.cumsum(mu, axis=-1)
    j = jnp.arange(1, v.shape[1] + 1, dtype=v.dtype)
    cond = mu - (css - eps[:, None]) / j > 0
    rho = jnp.maximum(jnp.sum(cond, axis=-1), 1)  # number of kept coordinates
    theta = (jnp.take_along_axis(css, (rho - 1)[:, None], axis=-1)[:, 0] - eps) / rho
    w = jnp.sign(v) * jnp.maximum(u - theta[:, None], 0.0)
    inside = jnp.sum(u, axis=-1) <= eps
    return jnp.where(inside[:, None], v, w).reshape(delta.shape)


def project_l1_box(delta: Array, x: Array, eps, iters: int = 40) -> Array:
    """Projection onto ``{d : ||d||_1 <= eps, 0 <= x + d <= 1}`` (the set of APGD-L1).

    The solution is ``sign(v) * clip(|v| - theta, 0, u)`` with ``u`` the room left in the box in
    the direction of ``v`` and the smallest ``theta >= 0`` meeting the budget; ``theta`` is found
    by bisection (``iters`` halvings of [0, max|v|]; the feasible end is returned).
    """
    b = delta.shape[0]
    v = delta.reshape(b, -1)
    xf = x.reshape(b, -1)
    eps = jnp.broadcast_to(jnp.asarray(eps, v.dtype), (b,))
    room = jnp.where(v > 0, 1.0 - xf, xf)
    a = jnp.abs(v)

    def total(theta):
        return jnp.sum(jnp.clip(a - theta[:, None], 0.0, room), axis=-1)

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        ok = total(mid) <= eps
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    lo = jnp.zeros((b,), v.dtype)
    hi = jnp.max(a, axis=-1)
    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    theta = jnp.where(total(lo) <= eps, lo, hi)
    w = jnp.sign(v) * jnp.clip(a - theta[:, None], 0.0, room)
    # float32 rounding can leave the sum a few ulps above eps: shrink (stays in the box).
    n = jnp.sum(jnp.abs(w), axis=-1)
    w = w * jnp.minimum(1.0, eps / jnp.maximum(n, 1e-30))[:, None]
    return w.reshape(delta.shape)


def project(x_adv: Array, x: Array, eps, norm: str) -> Array:
    """Map ``x_adv`` into ``{x + d : ||d|| <= eps} ∩ [0, 1]^n``, per example.

    Linf and L1 are exact Euclidean projections onto the intersection; L2 projects onto the ball
    then clips to the box (feasible, and what PGD-L2/APGD-L2 reference code does).
    """
    delta = x_adv - x
    if norm == "linf":
        delta = project_linf(delta, eps)
    elif norm == "l2":
        delta = project_l2(delta, eps)
    elif norm == "l1":
        return x + project_l1_box(delta, x, eps)
    else:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    return clip_to_box(x + delta)
