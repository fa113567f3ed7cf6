"""EAD: elastic-net attack (Chen et al. 2018).

"EAD: Elastic-Net Attacks to Deep Neural Networks via Adversarial Examples", AAAI 2018,
eq. (5)-(8): minimise ``c * f(x') + ||x' - x||_2^2 + beta * ||x' - x||_1`` over the [0, 1]
box with FISTA: a gradient step on the smooth part ``c * f + ||.||_2^2`` at the slack point
``z``, then the projected shrinkage-thresholding ``S_beta`` (eq. 7), then the momentum
``z = x_{k+1} + k / (k + 3) (x_{k+1} - x_k)``. The step size decays as
``lr * (1 - k / max_iterations)^0.5`` and ``c`` is found per example by the C&W binary
search. ``f`` is the C&W margin ``max(z_y - max_{j != y} z_j, -kappa)``. The returned example
is the best adversarial iterate under the decision rule: ``"EN"`` (smallest elastic-net
distance ``||d||_2^2 + beta ||d||_1``) or ``"L1"`` (smallest ``||d||_1``). As in the authors'
``en_attack.py`` the shrinkage threshold is ``beta`` itself; early abort is decided per
example (see ``cw.py``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from robustjax.attacks._core import AttackResult, margin
from robustjax.attacks.cw import binary_search, kappa_success, track_step, update_const
from robustjax.entry import attack_entry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class EADConfig:
    """EAD; defaults from Chen et al. 2018 (Sec. 4) and ``en_attack.py``.

    Attributes:
      beta: L1 weight and shrinkage threshold (1e-2; the paper tries 1e-1 ... 1e-3).
      decision_rule: ``"EN"`` or ``"L1"``, how the best adversarial example is chosen.
      learning_rate: initial ISTA step (1e-2), decayed with power 0.5.
      binary_search_steps: rounds of the search over c (9).
      max_iterations: FISTA steps per round (1,000).
      abort_early: stop a round when the loss stalls (checked every ``max_iterations // 10``).
      initial_const: first c (1e-3).
      confidence: kappa of the margin.
      targeted: if True ``y`` holds target classes.
    """

    beta: float = 1e-2
    decision_rule: str = "EN"
    learning_rate: float = 1e-2
    binary_search_steps: int = 9
    max_iterations: int = 1000
    abort_early: bool = True
    initial_const: float = 1e-3
    confidence: float = 0.0
    targeted: bool = False

    def __post_init__(self):
        if self.decision_rule not in ("EN", "L1"):
            raise ValueError(f"decision_rule must be 'EN' or 'L1', got {self.decision_rule!r}")
        if self.binary_search_steps < 1 or self.max_iterations < 1 or self.beta < 0:
            raise ValueError("need binary_search_steps >= 1, max_iterations >= 1, beta >= 0")


def shrink(z: Array, x: Array, beta) -> Array:
    """Projected shrinkage-thresholding ``S_beta`` onto [0, 1] (eq. 7), elementwise."""
    d = z - x
    return jnp.where(d > beta, jnp.minimum(z - beta, 1.0),
                     jnp.where(d < -beta, jnp.maximum(z + beta, 0.0), x))


@attack_entry
def ead(apply_fn, params, x: Array, y: Array, key: Array,
        config: EADConfig = EADConfig()) -> AttackResult:
    """EAD: x [b, H, W, C] in [0, 1], y int [b] -> AttackResult (``key`` unused).

    ``x_adv`` is the best adversarial example under the decision rule (``x`` where none was
    found); ``norm`` is its L1 distance; ``loss`` the margin at ``x_adv``; ``queries`` the
    gradient evaluations per example.
    """
    del key
    cfg = config
    b = x.shape[0]
    bshape = (b,) + (1,) * (x.ndim - 1)
    check_every = max(cfg.max_iterations // 10, 1)
    flat = lambda v: v.reshape(b, -1)

    def f_of(logits):
        return jnp.maximum(-margin(logits, y, cfg.targeted), -cfg.confidence)

    def smooth(z, const):  # c * f + ||z - x||_2^2 at the slack point
        return jnp.sum(const * f_of(apply_fn(params, z)) + jnp.sum(flat(z - x) ** 2, -1))

    grad_fn = jax.grad(smooth)

    def one_round(_, outer):
        const, lower, upper, o_dist, o_x, queries = outer

        def cond(st):
            return (st[0] < cfg.max_iterations) & jnp.any(st[1])

        def body(st):
            k, active, x_k, z, prev, best, found, o_dist, o_x, queries = st
            lr = cfg.learning_rate * jnp.sqrt(1.0 - k / cfg.max_iterations)
            x_new = shrink(z - lr * grad_fn(z, const), x, cfg.beta)
            kf = (k + 1).astype(x.dtype)
            z_new = x_new + kf / (kf + 3.0) * (x_new - x_k)
            logits = apply_fn(params, x_new)
            d = flat(x_new - x)
            l1 = jnp.sum(jnp.abs(d), -1)
            l2sq = jnp.sum(d * d, -1)
            en = l2sq + cfg.beta * l1
            loss = const * f_of(logits) + en
            dist = en if cfg.decision_rule == "EN" else l1
            prev, active, best, found, o_dist, o_x = track_step(
                cfg.abort_early & (k % check_every == 0), loss, prev, active,
                kappa_success(logits, y, cfg.targeted, cfg.confidence), dist, best, found,
                o_dist, o_x, x_new)
            a = active.reshape(bshape)
            x_k, z = jnp.where(a, x_new, x_k), jnp.where(a, z_new, z)
            return (k + 1, active, x_k, z, prev, best, found, o_dist, o_x,
                    queries + active.astype(jnp.int32))

        st = (jnp.int32(0), jnp.ones((b,), bool), x, x, jnp.full((b,), 1e6, x.dtype),
              jnp.full((b,), 1e10, x.dtype), jnp.zeros((b,), bool), o_dist, o_x, queries)
        st = jax.lax.while_loop(cond, body, st)
        found, o_dist, o_x, queries = st[6], st[7], st[8], st[9]
        const, lower, upper = update_const(found, const, lower, upper)
        return const, lower, upper, o_dist, o_x, queries

    return binary_search(one_round, apply_fn, params, x, y, cfg, "l1")
