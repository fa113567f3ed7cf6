"""APGD with the L1 threat model (Croce & Hein 2021, "Mind the box: l1-APGD for sparse
adversarial attacks on image classifiers", ICML), as in the authors' ``autopgd_base.py``.

One run differs from the Linf/L2 APGD of ``apgd.py`` in four ways:

* the step is a *sparse* L1 direction: with ``topk`` the fraction of coordinates to move,
  the threshold is the ``floor((1 - topk) n)``-th smallest ``|g_i|`` and
  ``d = sign(g) [|g| >= thr] / ||sign(g) [|g| >= thr]||_1``;
  ``x_{k+1} = P(x_k + eta_k d)`` with ``P`` the exact projection onto the L1 ball intersected
  with the [0, 1] box (``projections.project_l1_box``), and no momentum;
* the start is ``P(x + t)``, ``t`` standard Gaussian, the step size ``eta_0 = eps``;
* every ``k = max(int(0.04 N), 1)`` iterations the sparsity adapts: ``s`` = L0 norm of
  ``x_best - x``; ``topk <- s / n / 1.5``; if ``s`` fell below 0.95 of its last value the step
  resets to ``eps`` and the run restarts from ``x_best``, otherwise the step is divided by 1.5;
  the step stays in ``[eps / 10, eps]``;
* ``use_largereps`` (AutoAttack's standard L1 version): three runs at ``3 eps``, ``2 eps`` and
  ``eps`` with ``ceil(0.3 N)``, ``ceil(0.3 N)`` and the remaining iterations, each starting
  from the previous run's best point projected onto the smaller ball (the first from a
  Gaussian point projected onto the ``3 eps`` ball); with a given start, ``topk`` starts at
  ``L0(x_init - x) / n / 1.5``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks import _core
from robustjax.attacks.apgd import _bcast, track_best


def l0(delta):
    """Number of non-zero coordinates per example, float [b]."""
    return jnp.sum(delta.reshape(delta.shape[0], -1) != 0, -1).astype(delta.dtype)


def sparse_l1_direction(grad, topk):
    """Unit-L1 sparse ascent direction of ``grad`` [b, ...] moving the top ``topk`` [b]
    fraction of coordinates (ties at the threshold included, as in the reference)."""
    b = grad.shape[0]
    g = grad.reshape(b, -1)
    n = g.shape[1]
    idx = jnp.clip((1.0 - topk) * n, 0, n - 1).astype(jnp.int32)  # truncation, as .long()
    thr = kth_smallest(jnp.abs(g), idx)[:, None]  # sort(|g|)[idx]
    s = jnp.where(jnp.abs(g) >= thr, jnp.sign(g), 0.0)
    return (s / (jnp.sum(jnp.abs(s), -1, keepdims=True) + 1e-10)).reshape(grad.shape)


def kth_smallest(a, k):
    """``sort(a, -1)[:, k]`` for non-negative floats ``a`` [b, n] and ranks ``k`` int [b].

    Without sorting (XLA:CPU's sort of ``[b, 3072]`` costs ~1 s a step): bisection over the bit
    patterns of ``a``, which non-negative floats order like their values, for the smallest
    pattern with more than ``k`` entries at or below it; exact after ``bits`` halvings.
    """
    int_type = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[a.dtype.itemsize]
    keys = jax.lax.bitcast_convert_type(a, int_type)

    def halve(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(keys <= mid[:, None], axis=-1) > k
        return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)

    lo = jnp.full(k.shape, -1, int_type)
    _, hi = jax.lax.fori_loop(0, 8 * a.dtype.itemsize, halve, (lo, jnp.max(keys, axis=-1)))
    return jax.lax.bitcast_convert_type(hi, a.dtype)


def _run(apply_fn, params, x, y, key, eps, steps, loss_fn, loop, eot_iter, x_init=None):
    from robustjax.attacks.apgd import loss_and_grad

    b = x.shape[0]
    n = int(np.prod(x.shape[1:]))
    eps_b = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (b,))
    value_grad = loss_and_grad(apply_fn, params, y, loss_fn, eot_iter)

    def proj(z):
        return _core.project(z, x, eps_b, "l1")

    if x_init is None:
        x_adv = _core.clip_to_box(proj(x + jax.random.normal(key, x.shape, x.dtype)))
        topk = jnp.full((b,), 0.2, x.dtype)
        sp_old = jnp.full((b,), float(n), x.dtype)
    else:
        x_adv = _core.clip_to_box(x_init)
        sp_old = l0(x_adv - x)
        topk = sp_old / n / 1.5
    v, g, fooled = value_grad(x_adv)
    k = max(int(0.04 * steps), 1)
    carry = dict(x_adv=x_adv, grad=g, step=eps_b, x_best=x_adv, grad_best=g, loss_best=v,
                 x_best_adv=x_adv, fooled=fooled, topk=topk, sp_old=sp_old)

    def body(i, c):
        x_new = proj(c["x_adv"] + _bcast(c["step"], x) * sparse_l1_direction(c["grad"],
                                                                              c["topk"]))
        v, g, fooled_now = value_grad(x_new)
        x_best_adv, x_best, grad_best, loss_best = track_best(c, x, x_new, v, g, fooled_now)

        check = (i + 1) % k == 0
        sp_curr = l0(x_best - x)
        fl = check & (sp_curr / c["sp_old"] < 0.95)
        step = jnp.where(fl, eps_b, c["step"] / 1.5)
        step = jnp.where(check, jnp.clip(step, eps_b / 10.0, eps_b), c["step"])
        return dict(
            x_adv=jnp.where(_bcast(fl, x), x_best, x_new),
            grad=jnp.where(_bcast(fl, x), grad_best, g), step=step, x_best=x_best,
            grad_best=grad_best, loss_best=loss_best, x_best_adv=x_best_adv,
            fooled=c["fooled"] | fooled_now,
            topk=jnp.where(check, sp_curr / n / 1.5, c["topk"]),
            sp_old=jnp.where(check, sp_curr, c["sp_old"]))

    return _core.loop_steps(body, carry, steps, loop)


def apgd_l1_run(apply_fn, params, x, y, key, eps, steps, loss_fn, loop="auto", eot_iter=1,
                x_init=None):
    """One L1-APGD run; returns ``(x_out, success, loss_best)`` like ``apgd.apgd_run``."""
    c = _run(apply_fn, params, x, y, key, eps, steps, loss_fn, loop, eot_iter, x_init)
    x_out = jnp.where(_bcast(c["fooled"], x), c["x_best_adv"], c["x_best"])
    return x_out, c["fooled"], c["loss_best"]


def largereps_schedule(steps: int):
    """``[(eps factor, iterations)]`` of the decreasing-eps schedule: 3, 2, 1 x eps over
    ``ceil(0.3 N)``, ``ceil(0.3 N)`` and the rest of the ``N`` iterations."""
    a = math.ceil(0.3 * steps)
    return [(3.0, a), (2.0, a), (1.0, steps - 2 * a)]


def apgd_l1_largereps(apply_fn, params, x, y, key, eps, steps, loss_fn, loop="auto",
                      eot_iter=1):
    """The decreasing-eps L1-APGD (``use_largereps``); the result is the last (eps) run's."""
    b = x.shape[0]
    eps_b = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (b,))
    k0, key = jax.random.split(key)
    x_init = x + jax.random.normal(k0, x.shape, x.dtype)
    x_init = _core.project(x_init, x, 3.0 * eps_b, "l1")
    for s, (factor, n_s) in enumerate(largereps_schedule(steps)):
        x_init = _core.project(x_init, x, factor * eps_b, "l1")
        c = _run(apply_fn, params, x, y, jax.random.fold_in(key, s), factor * eps_b, n_s,
                 loss_fn, loop, eot_iter, x_init)
        x_init = c["x_best"]
    x_out = jnp.where(_bcast(c["fooled"], x), c["x_best_adv"], c["x_best"])
    return x_out, c["fooled"], c["loss_best"]
