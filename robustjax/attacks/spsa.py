"""SPSA attack (Uesato et al. 2018), a score-based black-box attack under Linf.

"Adversarial Risk and the Dangers of Evaluating Against Weak Attacks", ICML 2018, Sec. 3.2 and
Algorithm 1: the gradient of the margin loss is estimated by simultaneous perturbation,

    g = 1/n sum_i [f(x + delta v_i) - f(x - delta v_i)] / (2 delta) * v_i,   v_i ~ Rademacher,

and the perturbation takes an Adam step along the estimate, then is projected back onto the
eps ball and the [0, 1] box. ``f`` is the margin ``max_{j != y} z_j - z_y`` (targeted:
``z_t - max_{j != t} z_j``) on logits, as in the paper (the C&W-style logit difference).

The model is used only through forward passes ``apply_fn(params, x)``. Queries per example
are counted exactly: 1 for the starting point, then per iteration ``2 * num_samples`` for the
estimate plus 1 to score the new point (which decides success and early stopping). An example
stops once adversarial; ``max_queries`` caps the number of iterations statically, so no
example exceeds it. The perturbed query points are clipped to [0, 1] so the model only ever
sees valid images (the paper's code does not clip them).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from robustjax.attacks._core import (
    AttackResult,
    lp_norm,
    margin,
    project_linf,
    success_mask,
)
from robustjax.entry import attack_entry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SPSAConfig:
    """SPSA settings; defaults from Uesato et al. 2018 (Sec. 3.2/5) and their released code.

    Attributes:
      eps: Linf radius in pixel units.
      delta: perturbation size of the finite differences (paper: 0.01).
      learning_rate: Adam learning rate on the perturbation (paper: 0.01).
      num_samples: Rademacher directions per step; each costs 2 queries (CleverHans: 128).
      iterations: optimisation steps (an evaluation budget; the paper varies it).
      max_queries: optional per-example query budget; limits ``iterations`` statically to
        ``(max_queries - 1) // (2 * num_samples + 1)``.
      targeted: if True ``y`` holds target classes.
    """

    eps: float = 8.0 / 255.0
    delta: float = 0.01
    learning_rate: float = 0.01
    num_samples: int = 128
    iterations: int = 100
    max_queries: Optional[int] = None
    targeted: bool = False

    def __post_init__(self):
        if self.num_samples < 1 or self.iterations < 0:
            raise ValueError(f"need num_samples >= 1 and iterations >= 0, got "
                             f"{self.num_samples}, {self.iterations}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}")

    @property
    def queries_per_step(self) -> int:
        return 2 * self.num_samples + 1

    @property
    def steps(self) -> int:
        """Iterations actually run: ``iterations``, capped by the query budget."""
        if self.max_queries is None:
            return self.iterations
        return min(self.iterations, (self.max_queries - 1) // self.queries_per_step)


@attack_entry(gradient=False)
def spsa(apply_fn, params, x: Array, y: Array, key: Array,
         config: SPSAConfig = SPSAConfig()) -> AttackResult:
    """SPSA under Linf: x [b, H, W, C] in [0, 1], y int [b] -> AttackResult.

    ``x_adv`` lies within ``eps`` (Linf) of ``x`` and in [0, 1]; ``loss`` is the margin at
    ``x_adv`` (positive = adversarial); ``queries`` the forward passes spent per example.

    Example::

        res = jax.jit(functools.partial(spsa, model.apply_fn, config=SPSAConfig(eps=0.3)))(
            model.params, x, y, jax.random.key(0))
    """
    cfg = config
    b = x.shape[0]
    n = cfg.num_samples
    eps = jnp.asarray(cfg.eps, x.dtype)

    y_rep = jnp.repeat(y, 2 * n)

    def scores(x_eval, labels):
        logits = apply_fn(params, x_eval)
        return margin(logits, labels, cfg.targeted), success_mask(logits, labels, cfg.targeted)

    marg, succ = scores(x, y)
    queries = jnp.ones((b,), jnp.int32)
    opt = optax.adam(cfg.learning_rate)
    opt_state = opt.init(jnp.zeros_like(x))

    def estimate(k, x_adv):
        v = jax.random.rademacher(k, (b, n) + x.shape[1:], x.dtype)
        pts = jnp.concatenate([x_adv[:, None] + cfg.delta * v, x_adv[:, None] - cfg.delta * v], 1)
        f, _ = scores(jnp.clip(pts, 0.0, 1.0).reshape((b * 2 * n,) + x.shape[1:]), y_rep)
        f = f.reshape(b, 2 * n)
        diff = (f[:, :n] - f[:, n:]) / (2.0 * cfg.delta)
        return jnp.mean(diff.reshape((b, n) + (1,) * (x.ndim - 1)) * v, axis=1)

    def cond(st):
        i, _, _, _, succ, _ = st
        return (i < cfg.steps) & ~jnp.all(succ)

    def body(st):
        i, x_adv, opt_state, marg, succ, queries = st
        active = ~succ
        keep = active[:, None, None, None]
        delta = x_adv - x
        g = estimate(jax.random.fold_in(key, i), x_adv)
        # optax minimises: feed the negated estimate to climb the margin.
        upd, new_state = opt.update(-g, opt_state, delta)
        x_new = jnp.clip(x + project_linf(delta + upd, eps), 0.0, 1.0)
        m_new, s_new = scores(x_new, y)
        opt_state = jax.tree.map(
            lambda new, old: jnp.where(keep, new, old) if new.shape == x.shape else new,
            new_state, opt_state)
        return (i + 1, jnp.where(keep, x_new, x_adv), opt_state, jnp.where(active, m_new, marg),
                jnp.where(active, s_new, succ),
                queries + active.astype(jnp.int32) * cfg.queries_per_step)

    st = (jnp.int32(0), x, opt_state, marg, succ, queries)
    _, x_adv, _, marg, succ, queries = jax.lax.while_loop(cond, body, st)
    return AttackResult(x_adv=x_adv, success=succ, loss=marg,
                        norm=lp_norm(x_adv - x, "linf").astype(jnp.float32), queries=queries)
