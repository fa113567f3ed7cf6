"""HopSkipJump (Chen, Jordan & Wainwright 2020), a decision-based attack, L2 and Linf.

"HopSkipJumpAttack: A Query-Efficient Decision-Based Attack", IEEE S&P 2020, Algorithm 2,
following the authors' reference code (``hsja.py``). From an adversarial start (uniform noise
blended towards ``x`` by bisection, ``decision.find_start``), each iteration ``t = 1..T``

1. estimates the gradient direction of the decision boundary at the current boundary point
   ``x_t`` by Monte Carlo (eq. 9-10, with the baseline of eq. 16):
   ``g = mean_i (phi(x_t + delta u_i) - mean phi) u_i``, ``phi = +1`` adversarial / ``-1``
   not, ``u_i`` uniform on the sphere (L2) or normalised uniform in the cube (Linf),
   ``n_t = min(init_num_evals * sqrt(t), max_num_evals)`` samples and
   ``delta_t = sqrt(d) theta dist_{t-1}`` (L2) or ``d theta dist_{t-1}`` (Linf), 0.1 at t = 1
   (Sec. 4.1; ``delta_distance="step"`` takes the reference code's distance instead);
2. steps along ``v = g / ||g||_2`` (L2) or ``sign(g)`` (Linf) with the geometric step size
   ``xi = dist_t / sqrt(t)`` halved until ``x_t + xi v`` is adversarial (Sec. 4.2);
3. returns to the boundary by bisection between ``x`` and that point (Alg. 1): on the
   segment ``(1 - a) x + a x'`` (L2) or on the clip box ``clip(x', x - a, x + a)`` (Linf),
   down to the threshold ``theta = gamma / d^{3/2}`` (L2) or ``gamma / d^2`` (Linf).

Label only: every query goes through ``decision.label_oracle``. One batched model call per
step: the ``n_t`` gradient samples of all examples go in chunks of ``eval_batch`` per example
(``n_t`` is rounded to a multiple of it), each halving and each bisection step is one call
over the batch. Queries are counted exactly per example and an example never passes
``max_queries``: a phase that would pass it is cut short, and the current point (always
adversarial) is kept. The trace records the norm after the start and after each iteration.

The clean image costs one query: an already misclassified example returns ``x`` (norm 0).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks import decision
from robustjax.attacks.decision import DecisionResult, bcast, distance, fits
from robustjax.attacks.gradient import config_class
from robustjax.entry import attack_entry

Array = jax.Array


@config_class()
class HopSkipJumpConfig:
    """HopSkipJump settings; defaults from Chen et al. 2020 and their code (``hsja.py``).

    Attributes:
      norm: ``"l2"`` or ``"linf"``.
      num_iterations: iterations T (the reference code's ``num_iterations``; foolbox: 64).
      gamma: sets the bisection threshold theta (1.0).
      init_num_evals, max_num_evals: gradient samples ``n_t = min(init sqrt(t), max)``
        (100 and 10,000).
      eval_batch: gradient samples per example in one model call; ``n_t`` is rounded to a
        multiple of it (20 keeps ``n_t`` within 10 of the paper's).
      max_queries: optional per-example budget of label queries; never exceeded.
      init_trials: uniform noise draws tried for a start (the code's limit is 10,000; 100 as
        ART's ``init_size``).
      max_halvings: cap on the halvings of the geometric step-size search.
      eps: optional radius: ``success`` then also requires ``norm <= eps``.
      targeted: ``y`` holds target labels (needs ``starting_points`` of the target classes).
      delta_distance: the distance in ``delta_t``: ``"boundary"`` (the paper's
        ``dist(x_{t-1}, x*)`` of the current boundary point, as foolbox) or ``"step"`` (the
        reference code's ``dist_post_update``: the point after the geometric step, before the
        bisection).
    """

    norm: str = "l2"
    num_iterations: int = 64
    gamma: float = 1.0
    init_num_evals: int = 100
    max_num_evals: int = 10000
    eval_batch: int = 20
    max_queries: Optional[int] = None
    init_trials: int = 100
    max_halvings: int = 30
    eps: Optional[float] = None
    targeted: bool = False
    delta_distance: str = "boundary"

    def __post_init__(self):
        if self.delta_distance not in ("boundary", "step"):
            raise ValueError(f"delta_distance must be 'boundary' or 'step', got "
                             f"{self.delta_distance!r}")
        if self.norm not in ("l2", "linf"):
            raise ValueError(f"HopSkipJump supports norm 'l2' or 'linf', got {self.norm!r}")
        for name in ("num_iterations", "init_num_evals", "max_num_evals", "eval_batch",
                     "init_trials", "max_halvings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}")
        if self.gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")

    def num_evals(self, t):
        """Gradient samples at iteration ``t >= 1`` (a multiple of ``eval_batch``)."""
        n = jnp.minimum(jnp.floor(self.init_num_evals * jnp.sqrt(jnp.asarray(t, jnp.float32))),
                        self.max_num_evals)
        chunks = jnp.maximum(jnp.round(n / self.eval_batch), 1).astype(jnp.int32)
        return chunks * self.eval_batch


def theta(cfg: HopSkipJumpConfig, d: int) -> float:
    """The bisection threshold: ``gamma / d^{3/2}`` (L2) or ``gamma / d^2`` (Linf)."""
    return cfg.gamma / (d * math.sqrt(d)) if cfg.norm == "l2" else cfg.gamma / d ** 2


def _project(x, x_far, alpha, norm):
    """The point at ``alpha`` [b] between ``x`` and ``x_far`` (blend for L2, box for Linf)."""
    a = bcast(alpha, x)
    if norm == "l2":
        return (1.0 - a) * x + a * x_far
    return jnp.clip(x_far, x - a, x + a)


def boundary_search(is_adv, x, x_far, queries, active, cfg: HopSkipJumpConfig, th: float):
    """Bisection from ``x`` (not adversarial) to ``x_far`` (adversarial), Alg. 1 of the paper.

    Returns ``(point at the high end [b, ...], queries [b])``; stops per example when the
    interval is below the threshold, the budget is spent, or the example is not ``active``.
    """
    if cfg.norm == "l2":
        hi = jnp.ones(x.shape[:1], jnp.float32)
        thr = jnp.full_like(hi, th)
    else:
        hi = distance(x_far, x, "linf")
        thr = jnp.minimum(hi * th, th)
    lo = jnp.zeros_like(hi)
    steps = int(math.ceil(math.log2(1.0 / th))) + 1  # an upper bound: the width halves

    def bisect(_, st):
        lo, hi, q = st
        ask = active & ((hi - lo) > thr) & fits(q, 1, cfg.max_queries)
        mid = (lo + hi) / 2.0
        ok = is_adv(_project(x, x_far, mid, cfg.norm))
        hi = jnp.where(ask & ok, mid, hi)
        lo = jnp.where(ask & ~ok, mid, lo)
        return lo, hi, q + ask.astype(jnp.int32)

    # a while loop: every example is usually done well before the static bound
    def cond(st):
        i, lo, hi, q = st
        return (i < steps) & jnp.any(active & ((hi - lo) > thr) & fits(q, 1, cfg.max_queries))

    def body(st):
        i, lo, hi, q = st
        return (i + 1,) + bisect(i, (lo, hi, q))

    _, lo, hi, queries = jax.lax.while_loop(cond, body, (jnp.int32(0), lo, hi, queries))
    return _project(x, x_far, hi, cfg.norm), queries


def estimate_direction(is_adv, x_b, delta, n_t, key, queries, active, cfg):
    """Monte-Carlo boundary-normal estimate at ``x_b`` [b, ...] from ``n_t`` labels (eq. 9-16).

    Returns ``(unit-L2 direction [b, ...], queries [b], done [b] bool)``; ``done`` is False
    where the budget did not allow all ``n_t`` samples (the estimate is then not used).
    """
    b, m = x_b.shape[0], cfg.eval_batch
    shape = (b, m) + x_b.shape[1:]
    zeros = jnp.zeros(x_b.shape, jnp.float32)

    def cond(st):
        j, _, _, _, _, q = st
        return (j * m < n_t) & jnp.any(active & fits(q, m, cfg.max_queries))

    def body(st):
        j, s_f, s_u, s_fu, done, q = st
        ask = active & fits(q, m, cfg.max_queries)
        k = jax.random.fold_in(key, j)
        if cfg.norm == "l2":
            u = jax.random.normal(k, shape, jnp.float32)
        else:
            u = jax.random.uniform(k, shape, jnp.float32, -1.0, 1.0)
        u = u / jnp.sqrt(jnp.sum(u * u, axis=(2, 3, 4), keepdims=True))
        d5 = delta.reshape(b, 1, 1, 1, 1)
        pts = jnp.clip(x_b[:, None] + d5 * u, 0.0, 1.0)
        u = (pts - x_b[:, None]) / d5  # the direction actually taken, after clipping
        f = 2.0 * is_adv(pts.reshape((b * m,) + x_b.shape[1:]), m).astype(jnp.float32) - 1.0
        f = f.reshape(b, m, 1, 1, 1)
        w = bcast(ask.astype(jnp.float32), x_b)
        s_f = s_f + jnp.where(ask, jnp.sum(f, axis=1)[:, 0, 0, 0], 0.0)
        s_u = s_u + w * jnp.sum(u, axis=1)
        s_fu = s_fu + w * jnp.sum(f * u, axis=1)
        return j + 1, s_f, s_u, s_fu, done + ask.astype(jnp.int32), q + ask * m

    st = (jnp.int32(0), jnp.zeros((b,), jnp.float32), zeros, zeros,
          jnp.zeros((b,), jnp.int32), queries)
    _, s_f, s_u, s_fu, chunks, queries = jax.lax.while_loop(cond, body, st)
    n = jnp.maximum(chunks * m, 1).astype(jnp.float32)
    mean_f = s_f / n
    # eq. 16's baseline; when every sample agrees, the code uses +-mean(u) instead
    same = jnp.abs(mean_f) >= 1.0
    g = jnp.where(bcast(same, x_b), bcast(mean_f, x_b) * s_u / bcast(n, x_b),
                  (s_fu - bcast(mean_f, x_b) * s_u) / bcast(n, x_b))
    g = g / jnp.maximum(bcast(jnp.sqrt(jnp.sum(g * g, axis=(1, 2, 3))), x_b), 1e-12)
    return g, queries, chunks * m >= n_t


@attack_entry(gradient=False)
def hopskipjump(apply_fn, params, x: Array, y: Array, key: Array,
                config: HopSkipJumpConfig = HopSkipJumpConfig(),
                starting_points: Optional[Array] = None) -> DecisionResult:
    """HopSkipJump: x [b, H, W, C] in [0, 1], y int [b] -> DecisionResult (label-only).

    ``x_adv`` is adversarial where ``is_adv`` and as close to ``x`` as the attack got in
    ``norm``; ``trace_queries``/``trace_norm`` [b, num_iterations + 1] hold the queries and
    norm after the start and after each iteration. ``starting_points`` [b, H, W, C] optional
    adversarial starts (required for ``targeted``); a non-adversarial one is replaced by the
    noise search.

    Example::

        res = jax.jit(functools.partial(hopskipjump, model.apply_fn,
                                        config=HopSkipJumpConfig(max_queries=1000)))(
            model.params, x, y, jax.random.key(0))
    """
    cfg = config
    decision.check_start(x, starting_points, cfg.targeted, "HopSkipJump")
    b = x.shape[0]
    d = int(np.prod(x.shape[1:]))
    th = theta(cfg, d)
    is_adv = decision.label_oracle(apply_fn, params, y, cfg.targeted)
    k_init, k_loop = jax.random.split(key)
    x_cur, found, clean_adv, q = decision.start(is_adv, x, k_init, starting_points,
                                                cfg.init_trials, cfg.max_queries)
    # the start goes to the boundary first (the reference code's first binary_search_batch)
    active = found & ~clean_adv
    x_cur, q = boundary_search(is_adv, x, x_cur, q, active, cfg, th)
    dist = jnp.where(found, distance(x_cur, x, cfg.norm), jnp.inf)
    dist_post = dist

    def step(t, st):
        """Iteration t (1-based): gradient estimate, geometric step, back to the boundary."""
        x_cur, dist, dist_post, q = st
        kt = jax.random.fold_in(k_loop, t)
        ref = dist if cfg.delta_distance == "boundary" else dist_post
        if cfg.norm == "l2":
            delta = jnp.sqrt(d) * th * ref
        else:
            delta = d * th * ref
        delta = jnp.where(t == 1, 0.1, delta)
        n_t = cfg.num_evals(t)
        g, q, est_ok = estimate_direction(is_adv, x_cur, delta, n_t, kt, q, active, cfg)
        v = g if cfg.norm == "l2" else jnp.sign(g)
        go = active & est_ok

        def g_cond(gs):
            i, _, ok, q = gs
            return (i < cfg.max_halvings) & jnp.any(go & ~ok & fits(q, 1, cfg.max_queries))

        def g_body(gs):
            i, xi, ok, q = gs
            ask = go & ~ok & fits(q, 1, cfg.max_queries)
            adv = is_adv(x_cur + bcast(xi, x) * v)
            ok = ok | (ask & adv)
            xi = jnp.where(ask & ~adv, xi / 2.0, xi)
            return i + 1, xi, ok, q + ask.astype(jnp.int32)

        xi0 = dist / jnp.sqrt(t.astype(jnp.float32))
        gs = (jnp.int32(0), xi0, jnp.zeros((b,), bool), q)
        _, xi, moved, q = jax.lax.while_loop(g_cond, g_body, gs)
        x_far = jnp.where(bcast(moved, x), jnp.clip(x_cur + bcast(xi, x) * v, 0.0, 1.0), x_cur)
        new_post = jnp.where(moved, distance(x_far, x, cfg.norm), dist_post)
        x_new, q = boundary_search(is_adv, x, x_far, q, moved, cfg, th)
        x_cur = jnp.where(bcast(moved, x), x_new, x_cur)
        dist = jnp.where(found, distance(x_cur, x, cfg.norm), jnp.inf)
        return x_cur, dist, new_post, q

    def scan_body(st, t):
        st = step(t, st)
        return st, (st[3], st[1])

    st = (x_cur, dist, dist_post, q)
    ts = jnp.arange(1, cfg.num_iterations + 1, dtype=jnp.int32)
    (x_cur, dist, _, q), (tq, tn) = jax.lax.scan(scan_body, st, ts)
    trace_q = jnp.concatenate([st[3][:, None], tq.T], axis=1)
    trace_n = jnp.concatenate([st[1][:, None], tn.T], axis=1)
    return decision.result(x, x_cur, found, q, cfg.norm, cfg.eps, trace_q, trace_n)
