"""NES attack (Ilyas, Engstrom, Athalye & Lin 2018), a score-based black-box attack, Linf/L2.

"Black-box Adversarial Attacks with Limited Queries and Information", ICML 2018, Sec. 2.2 and
Algorithm 1: natural evolution strategies with antithetic Gaussian sampling estimate the
gradient of the loss from scores only,

    g = 1 / (n sigma) sum_{i <= n/2} [F(x + sigma u_i) - F(x - sigma u_i)] u_i,  u_i ~ N(0, I),

and projected steps ``x <- Pi_eps(x + eta d(g))`` follow it (``d`` the sign for Linf,
``g / ||g||_2`` for L2), with the momentum and the plateau learning-rate decay of the
authors' code: ``g <- mu g_prev + (1 - mu) g``; when the loss got worse over the last
``plateau_length`` steps, ``eta <- max(eta / plateau_drop, min_lr)``.

The model is used only through forward passes (scores). Queries per example are exact: 1 for
the starting point, then per step ``n`` for the estimate plus 1 to score the new point (it
decides success, early stopping and the plateau rule); an example stops once adversarial and
never passes ``max_queries`` (it caps the steps statically). Query points are clipped to
[0, 1] so the model only sees valid images.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from robustjax.attacks._core import (
    AttackResult,
    get_loss,
    lp_norm,
    project,
    static_float,
    steepest_direction,
    success_mask,
)
from robustjax.attacks.decision import bcast
from robustjax.attacks.gradient import config_class
from robustjax.entry import attack_entry

Array = jax.Array


@config_class("eps")
class NESConfig:
    """NES settings; defaults from Ilyas et al. 2018 (Table 4, ImageNet) and their code.

    Attributes:
      eps: radius in pixel units (paper: 0.05 Linf).
      norm: ``"linf"`` or ``"l2"``.
      sigma: search variance of the Gaussian samples (0.001).
      samples_per_draw: n, samples per estimate, antithetic pairs so even (50).
      learning_rate: initial step size eta (``max_lr`` 0.01); ``min_lr`` its floor (5e-5).
      momentum: mu on the gradient estimate (0.9).
      plateau_length, plateau_drop: the learning-rate decay rule (5 steps, divide by 2).
      steps: iterations (capped by ``max_queries``).
      max_queries: optional per-example budget of forward passes; never exceeded.
      loss: ``"ce"`` (the paper's) or ``"margin"``; maximised (targeted: towards ``y``).
      targeted: ``y`` holds target labels.
    """

    eps: float = 0.05
    norm: str = "linf"
    sigma: float = 1e-3
    samples_per_draw: int = 50
    learning_rate: float = 1e-2
    min_lr: float = 5e-5
    momentum: float = 0.9
    plateau_length: int = 5
    plateau_drop: float = 2.0
    steps: int = 100
    max_queries: Optional[int] = None
    loss: str = "ce"
    targeted: bool = False

    def __post_init__(self):
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"NES supports norm 'linf' or 'l2', got {self.norm!r}")
        if self.samples_per_draw < 2 or self.samples_per_draw % 2:
            raise ValueError("samples_per_draw must be even and >= 2 (antithetic pairs), got "
                             f"{self.samples_per_draw}")
        if self.steps < 0 or self.plateau_length < 1:
            raise ValueError(f"need steps >= 0 and plateau_length >= 1, got {self.steps}, "
                             f"{self.plateau_length}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}")
        if static_float(self.eps) and self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        get_loss(self.loss)

    @property
    def queries_per_step(self) -> int:
        return self.samples_per_draw + 1

    @property
    def num_steps(self) -> int:
        """Steps actually run: ``steps``, capped by the query budget."""
        if self.max_queries is None:
            return self.steps
        return min(self.steps, (self.max_queries - 1) // self.queries_per_step)


def nes_gradient(loss_fn, x: Array, key: Array, sigma: float, n: int) -> Array:
    """Antithetic NES estimate of ``grad loss_fn`` at ``x`` [b, ...] from ``n`` scores each.

    ``loss_fn`` maps a batch [b * n, ...] (example-major) to [b * n] losses; the query points
    are clipped to [0, 1]. Returns [b, ...].
    """
    b, half = x.shape[0], n // 2
    u = jax.random.normal(key, (b, half) + x.shape[1:], x.dtype)
    pts = jnp.concatenate([x[:, None] + sigma * u, x[:, None] - sigma * u], axis=1)
    f = loss_fn(jnp.clip(pts, 0.0, 1.0).reshape((b * n,) + x.shape[1:])).reshape(b, n)
    w = (f[:, :half] - f[:, half:]).reshape((b, half) + (1,) * (x.ndim - 1))
    return jnp.sum(w * u, axis=1) / (n * sigma)


@attack_entry(gradient=False)
def nes(apply_fn, params, x: Array, y: Array, key: Array,
        config: NESConfig = NESConfig()) -> AttackResult:
    """NES-PGD: x [b, H, W, C] in [0, 1], y int [b] -> AttackResult (scores only).

    ``x_adv`` lies in the eps ball and [0, 1]; ``loss`` is the attack loss at ``x_adv``;
    ``queries`` the forward passes spent per example.

    Example::

        res = jax.jit(functools.partial(nes, model.apply_fn, config=NESConfig(eps=0.3)))(
            model.params, x, y, jax.random.key(0))
    """
    cfg = config
    b, n = x.shape[0], cfg.samples_per_draw
    loss_of = get_loss(cfg.loss)
    y_rep = jnp.repeat(y, n)

    def scores(xb, labels):
        logits = apply_fn(params, xb)
        return loss_of(logits, labels, cfg.targeted), success_mask(logits, labels, cfg.targeted)

    loss, succ = scores(x, y)
    queries = jnp.ones((b,), jnp.int32)
    hist = jnp.full((b, cfg.plateau_length), jnp.nan, jnp.float32)

    def cond(st):
        i, _, _, _, _, succ, _, _ = st
        return (i < cfg.num_steps) & ~jnp.all(succ)

    def body(st):
        i, x_adv, g_prev, lr, loss, succ, queries, hist = st
        active = ~succ
        g = nes_gradient(lambda xb: scores(xb, y_rep)[0], x_adv, jax.random.fold_in(key, i),
                         cfg.sigma, n)
        g = cfg.momentum * g_prev + (1.0 - cfg.momentum) * g
        step = bcast(lr, x) * steepest_direction(g, cfg.norm)
        x_new = project(x_adv + step, x, cfg.eps, cfg.norm)
        l_new, s_new = scores(x_new, y)
        # the code's plateau rule on the last plateau_length losses (ours are maximised)
        hist_new = jnp.concatenate([hist[:, 1:], l_new[:, None]], axis=1)
        drop = hist_new[:, -1] < hist_new[:, 0]  # False while the window has NaNs
        lr_new = jnp.where(drop, jnp.maximum(lr / cfg.plateau_drop, cfg.min_lr), lr)
        hist_new = jnp.where(drop[:, None], jnp.nan, hist_new)
        keep = bcast(active, x)
        return (i + 1, jnp.where(keep, x_new, x_adv), jnp.where(keep, g, g_prev),
                jnp.where(active, lr_new, lr), jnp.where(active, l_new, loss),
                jnp.where(active, s_new, succ),
                queries + active.astype(jnp.int32) * cfg.queries_per_step,
                jnp.where(active[:, None], hist_new, hist))

    lr0 = jnp.full((b,), cfg.learning_rate, jnp.float32)
    st = (jnp.int32(0), x, jnp.zeros_like(x), lr0, loss, succ, queries, hist)
    _, x_adv, _, _, loss, succ, queries, _ = jax.lax.while_loop(cond, body, st)
    return AttackResult(x_adv=x_adv, success=succ, loss=loss.astype(jnp.float32),
                        norm=lp_norm(x_adv - x, cfg.norm).astype(jnp.float32), queries=queries)
