"""Boundary attack (Brendel, Rauber & Bethge 2018), a decision-based attack under L2.

"Decision-Based Adversarial Attacks: Reliable Attacks Against Black-Box Machine Learning
Models", ICLR 2018, Sec. 3 and Fig. 2, following foolbox 3's ``BoundaryAttack`` (by the same
group). From an adversarial start (``decision.find_start``) every step draws one proposal per
example:

1. an orthogonal step: Gaussian ``eta`` made orthogonal to the source direction
   ``x - x_adv``, scaled to ``spherical_step * ||x - x_adv||`` and projected back onto the
   sphere around ``x`` (Pythagoras), then clipped to [0, 1];
2. a step towards the original of relative size ``source_step``;

the proposal replaces ``x_adv`` if it is adversarial and closer. Every
``update_stats_every_k`` steps the orthogonal (spherical) candidate is queried too; the
success rates over the last 100 spherical / 30 full candidates adapt the step sizes by
``step_adaptation`` (both up when > 50% of spherical steps stay adversarial, down below 20%;
the source step up above 25% / down below 10% of full steps). An example stops when its source
step falls below ``source_step_convergence``.

Label only (``decision.label_oracle``); one batched model call per step: the proposals of all
examples (and, on statistics steps, their spherical candidates: 2 per example). Queries are
counted exactly per example, never above ``max_queries``. The trace records the L2 norm every
``update_stats_every_k`` steps. Unlike foolbox, the start is found by bisection (10 queries)
rather than a 50-step linear search, and each example draws its own Gaussian.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from robustjax.attacks import decision
from robustjax.attacks.decision import DecisionResult, bcast, distance, fits
from robustjax.attacks.gradient import config_class
from robustjax.entry import attack_entry

Array = jax.Array
SPHERICAL_STATS, STEP_STATS = 100, 30  # queue lengths of the success statistics (foolbox)


@config_class()
class BoundaryConfig:
    """Boundary attack settings; defaults from Brendel et al. 2018 / foolbox 3.

    Attributes:
      steps: proposal steps (25,000).
      spherical_step, source_step: initial relative orthogonal and source step (0.01).
      source_step_convergence: an example stops when its source step is below this (1e-7).
      step_adaptation: factor of the step-size adaptation (1.5).
      update_stats_every_k: the spherical candidate is queried (and the steps adapted) every
        k steps (10).
      max_queries: optional per-example budget of label queries; never exceeded.
      init_trials: uniform noise draws tried for a start.
      eps: optional L2 radius: ``success`` then also requires ``norm <= eps``.
      targeted: ``y`` holds target labels (needs ``starting_points`` of the target classes).
    """

    steps: int = 25000
    spherical_step: float = 1e-2
    source_step: float = 1e-2
    source_step_convergence: float = 1e-7
    step_adaptation: float = 1.5
    update_stats_every_k: int = 10
    max_queries: Optional[int] = None
    init_trials: int = 100
    eps: Optional[float] = None
    targeted: bool = False

    @property
    def norm(self) -> str:
        return "l2"

    def __post_init__(self):
        for name in ("steps", "update_stats_every_k", "init_trials"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}")
        if not (self.spherical_step > 0 and self.source_step > 0 and self.step_adaptation > 1):
            raise ValueError("need spherical_step > 0, source_step > 0 and step_adaptation > 1, "
                             f"got {self.spherical_step}, {self.source_step}, "
                             f"{self.step_adaptation}")


def draw_proposals(key, x, x_adv, spherical_steps, source_steps):
    """(candidates, spherical candidates) [b, ...]: Brendel et al.'s orthogonal + source step."""
    b = x.shape[0]
    xf, af = x.reshape(b, -1), x_adv.reshape(b, -1)
    src = xf - af
    src_norm = jnp.sqrt(jnp.sum(src * src, axis=1))
    src_dir = src / jnp.maximum(src_norm, 1e-12)[:, None]
    eta = jax.random.normal(key, xf.shape, xf.dtype)
    eta = eta - jnp.sum(eta * src_dir, axis=1, keepdims=True) * src_dir  # orthogonal
    eta = eta * (spherical_steps * src_norm / jnp.maximum(
        jnp.sqrt(jnp.sum(eta * eta, axis=1)), 1e-12))[:, None]
    # back onto the sphere of radius ||src|| around x (Pythagoras)
    spherical = xf + (eta - src) / jnp.sqrt(spherical_steps ** 2 + 1.0)[:, None]
    spherical = jnp.clip(spherical, 0.0, 1.0)
    new_src = xf - spherical
    new_norm = jnp.sqrt(jnp.sum(new_src * new_src, axis=1))
    # the source step, corrected for the clipping's deviation from the sphere
    length = jnp.maximum(source_steps * src_norm + new_norm - src_norm, 0.0)
    length = length / jnp.maximum(new_norm, 1e-12)
    cand = jnp.clip(spherical + length[:, None] * new_src, 0.0, 1.0)
    return cand.reshape(x.shape), spherical.reshape(x.shape)


def _adapt(queue, full, hi, lo, factor, *steps):
    """Multiply ``steps`` by ``factor`` where the mean success > hi, divide where < lo."""
    p = jnp.nanmean(queue, axis=0)
    up, down = full & (p > hi), full & (p < lo)
    scale = jnp.where(up, factor, jnp.where(down, 1.0 / factor, 1.0))
    return tuple(s * scale for s in steps), up | down


@attack_entry(gradient=False)
def boundary(apply_fn, params, x: Array, y: Array, key: Array,
             config: BoundaryConfig = BoundaryConfig(),
             starting_points: Optional[Array] = None) -> DecisionResult:
    """Boundary attack: x [b, H, W, C] in [0, 1], y int [b] -> DecisionResult (label-only, L2).

    ``trace_queries``/``trace_norm`` [b, steps // update_stats_every_k + 1] hold queries and
    norm after the start and after every ``update_stats_every_k`` steps.
    ``starting_points`` [b, H, W, C]: optional adversarial starts (required for ``targeted``).

    Example::

        res = jax.jit(functools.partial(boundary, model.apply_fn,
                                        config=BoundaryConfig(max_queries=5000)))(
            model.params, x, y, jax.random.key(0))
    """
    cfg = config
    decision.check_start(x, starting_points, cfg.targeted, "Boundary attack")
    b = x.shape[0]
    k_every = cfg.update_stats_every_k
    is_adv = decision.label_oracle(apply_fn, params, y, cfg.targeted)
    k_init, k_loop = jax.random.split(key)
    x_adv, found, clean_adv, q = decision.start(is_adv, x, k_init, starting_points,
                                                cfg.init_trials, cfg.max_queries)
    running = found & ~clean_adv

    def one_step(i, st, with_stats):
        """Step ``i``: one proposal per example (plus its spherical candidate on stat steps)."""
        x_adv, sph, src, q, qs, qa, n_seen = st
        cost = 2 if with_stats else 1
        ask = running & (src >= cfg.source_step_convergence) & fits(q, cost, cfg.max_queries)
        cand, spherical = draw_proposals(jax.random.fold_in(k_loop, i), x, x_adv, sph, src)
        if with_stats:
            both = jnp.stack([cand, spherical], 1).reshape((2 * b,) + x.shape[1:])
            adv = is_adv(both, 2).reshape(b, 2)
            adv_c, adv_s = adv[:, 0], adv[:, 1]
        else:
            adv_c = is_adv(cand)
        closer = distance(cand, x, "l2") < distance(x_adv, x, "l2")
        x_adv = jnp.where(bcast(ask & adv_c & closer, x), cand, x_adv)
        q = q + ask.astype(jnp.int32) * cost
        if with_stats:
            # foolbox's ArrayQueue: a shared write position, NaN = no data for that example
            slot_s = n_seen % SPHERICAL_STATS
            slot_a = n_seen % STEP_STATS
            qs = qs.at[slot_s].set(jnp.where(ask, adv_s.astype(jnp.float32), qs[slot_s]))
            qa = qa.at[slot_a].set(jnp.where(ask, adv_c.astype(jnp.float32), qa[slot_a]))
            full_s = ~jnp.any(jnp.isnan(qs), axis=0)
            (sph, src), clear = _adapt(qs, full_s, 0.5, 0.2, cfg.step_adaptation, sph, src)
            qs = jnp.where(clear[None], jnp.nan, qs)
            full_a = ~jnp.any(jnp.isnan(qa), axis=0)
            (src,), clear = _adapt(qa, full_a, 0.25, 0.1, cfg.step_adaptation, src)
            qa = jnp.where(clear[None], jnp.nan, qa)
            n_seen = n_seen + 1
        return x_adv, sph, src, q, qs, qa, n_seen

    def alive(st, cost):
        _, _, src, q, _, _, _ = st
        return jnp.any(running & (src >= cfg.source_step_convergence)
                       & fits(q, cost, cfg.max_queries))

    def plain_steps(first, last, st):
        """Steps first .. last - 1 without statistics, while some example still runs."""
        def cond(c):
            return (c[0] < last) & alive(c[1], 1)

        def body(c):
            return c[0] + 1, one_step(c[0], c[1], False)

        return jax.lax.while_loop(cond, body, (jnp.int32(first), st))[1]

    def block(j, st):
        """k - 1 plain steps and one statistics step (steps j k + 1 .. (j + 1) k)."""
        st = plain_steps(j * k_every + 1, (j + 1) * k_every, st)
        return jax.lax.cond(alive(st, 2), lambda s: one_step((j + 1) * k_every, s, True),
                            lambda s: s, st)

    def scan_body(st, j):
        st = jax.lax.cond(alive(st, 1), lambda s: block(j, s), lambda s: s, st)
        return st, (st[3], jnp.where(found, distance(st[0], x, "l2"), jnp.inf))

    nan_q = lambda n: jnp.full((n, b), jnp.nan, jnp.float32)  # noqa: E731
    st = (x_adv, jnp.full((b,), cfg.spherical_step, jnp.float32),
          jnp.full((b,), cfg.source_step, jnp.float32), q, nan_q(SPHERICAL_STATS),
          nan_q(STEP_STATS), jnp.int32(0))
    n0 = jnp.where(found, distance(x_adv, x, "l2"), jnp.inf)
    st, (tq, tn) = jax.lax.scan(scan_body, st, jnp.arange(cfg.steps // k_every))
    rest = cfg.steps % k_every
    if rest:
        start = (cfg.steps // k_every) * k_every + 1
        st = plain_steps(start, start + rest, st)
    trace_q = jnp.concatenate([q[:, None], tq.T], axis=1)
    trace_n = jnp.concatenate([n0[:, None], tn.T], axis=1)
    return decision.result(x, st[0], found, st[3], "l2", cfg.eps, trace_q, trace_n)
